"""`make paper`: the paper's tables from stored experiments; missing models listed with their command."""
from __future__ import annotations

from bench.cli import main
from bench.report.paper import write_paper
from test_report import make_table


def test_paper_lists_measured_and_missing_models(tmp_path, capsys):
    folder = tmp_path / "resnet56-cifar10-paper-abcd1234"
    folder.mkdir()
    make_table().to_csv(folder / "runs.csv", index=False)  # a ResNet-56 experiment, nothing else
    written = write_paper(tmp_path)
    md = written["paper.md"].read_text()
    resnet56 = md.split("### resnet56")[1].split("###")[0]
    assert "Measured here, `resnet56-cifar10-paper-abcd1234`" in resnet56 and "DECORE-200 · all" in resnet56
    assert "DECORE-200 [" in resnet56  # the published row beside ours
    for model in ("vgg16", "resnet110", "googlenet", "densenet40"):
        part = md.split(f"### {model}")[1].split("###")[0]
        assert "**Not run yet.**" in part and f"make bench MODEL={model} DATASET=cifar10 PROFILE=paper" in part
    # the image count behind the GPU estimate, from the recipes: baseline + 41 trials (3 methods x 8, 2 partners x 8,
    # the control) of 300 epochs over the 45,000 training images (DECORE's gated joint epochs count 1.1)
    from bench.engine.recipe import load_recipe
    base = load_recipe("cifar-standard").epochs * 45_000
    decore = (260 * 1.1 + 40) * 45_000
    trials = 8 * decore + (2 * 8 + 2 * 8 + 1) * 300 * 45_000
    part = md.split("### resnet110")[1].split("###")[0]
    assert f"trains {(base + trials) / 1e6:.1f}M images (baseline {base / 1e6:.1f}M, 41 trials)" in part
    imagenet = md.split("### resnet50")[1]
    assert "Not run yet" in imagenet and "DECORE-5 [" in imagenet and "| 90." in imagenet  # published top-5 shown
    assert ("make bench MODEL=resnet50.tv_in1k DATASET=imagefolder:/path/to/imagenet PROFILE=imagenet "
            "SWEEP_ARGS=--pretrained" in imagenet and "--checkpoint PATH" in imagenet)
    tex = written["paper.tex"].read_text()
    assert tex.count(r"\begin{table}") == 6 == tex.count(r"\end{table}")
    assert main(["paper", "--results-dir", str(tmp_path)]) == 0 and "paper tables:" in capsys.readouterr().out


def test_an_image_folder_experiment_fills_the_imagenet_table(tmp_path):
    folder = tmp_path / "resnet50.tv_in1k-imagefolder__data_imagenet-imagenet-abcd1234"
    folder.mkdir()
    table = make_table()
    table["model"], table["dataset"] = "resnet50.tv_in1k", "imagefolder:/data/imagenet"  # a tag: which weights
    table.to_csv(folder / "runs.csv", index=False)
    imagenet = write_paper(tmp_path)["paper.md"].read_text().split("### resnet50")[1]
    assert f"Measured here, `{folder.name}`" in imagenet and "Not run yet" not in imagenet
