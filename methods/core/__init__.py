"""The pruning core every method shares: channel groups, exact gates, physical removal, plans."""
from .gates import Gates
from .groups import SCOPES, ChannelGroup, GatePoint, GroupSet, PruningError, channel_groups, describe
from .surgery import KeepPlan, apply_plan, prune_model, rebuild, removed_channels

__all__ = [
    "SCOPES", "ChannelGroup", "GatePoint", "Gates", "GroupSet", "KeepPlan", "PruningError", "apply_plan",
    "channel_groups", "describe", "prune_model", "rebuild", "removed_channels",
]
