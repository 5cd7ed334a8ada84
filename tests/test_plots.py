"""Loss-curve PNGs from metrics logs (evaluation.plots) and the comparison table's one number format."""

from tdlm.evaluation.comparison import _fmt
from tdlm.evaluation.plots import metric_points, plot_eval_curves, plot_run_losses
from tdlm.runs import Experiment


def logged_run(folder, offset=0.0):
    experiment = Experiment(folder)
    for step in (10, 20, 30):
        experiment.append_metrics({"step": step, "epoch": step / 30, "split": "train", "loss": 5.0 - step / 10})
        experiment.append_metrics({"step": step, "epoch": step / 30, "split": "eval", "eval_loss": 4.5 + offset})
    return experiment


def test_run_loss_curves_land_where_runs_says(tmp_path):
    experiment = logged_run(tmp_path / "run")
    assert metric_points(experiment, "train", "loss") == [(10, 4.0), (20, 3.0), (30, 2.0)]
    path = plot_run_losses(experiment)
    assert path == experiment.loss_curves_path and path.stat().st_size > 1000


def test_eval_curves_of_several_runs(tmp_path):
    folders = {"diffusion": logged_run(tmp_path / "dd").root, "autoregressive": logged_run(tmp_path / "ar", 1).root}
    assert plot_eval_curves(folders, tmp_path / "cmp" / "eval.png").stat().st_size > 1000


def test_comparison_numbers_share_one_format():
    assert [_fmt(v) for v in (3.61012, 0.01234, 36.97, 1455.12, 0.25, 12345, None)] == [
        "3.610", "0.01234", "36.97", "1,455", "0.2500", "12,345", "-"]
