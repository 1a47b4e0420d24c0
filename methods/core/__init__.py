"""The pruning core every method shares: channel groups, exact gates, physical removal, plans."""
from .gates import Gates, gate_vs_removal
from .errors import PruningError
from .groups import SCOPES, ChannelGroup, GatePoint, GroupSet, describe
from .offered import channel_groups
from .surgery import KeepPlan, apply_plan, prune_model, rebuild, removed_channels

__all__ = [
    "SCOPES", "ChannelGroup", "GatePoint", "Gates", "GroupSet", "KeepPlan", "PruningError", "apply_plan",
    "channel_groups", "describe", "gate_vs_removal", "prune_model", "rebuild", "removed_channels",
]
