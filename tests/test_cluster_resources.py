"""What a Ray task asks for (GPU / CPU / memory) and which device it then uses; the message when Ray
is missing. No Ray needed: these run everywhere."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from slam3r_app.cli import main as cli_main
from slam3r_app.config import load_config
from slam3r_plugins.cluster import ClusterOptions, task_resources, visible_devices_env

CPU = ClusterOptions()


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "cuda:0"])
def test_stream3r_on_cuda_is_one_gpu_and_uses_the_gpu_ray_gives_it(device):
    r = task_resources("stream3r", device, "auto", CPU, cluster_gpus=0)
    assert (r.num_gpus, r.num_cpus, r.gpu) == (1.0, 1.0, True)
    # Ray sets CUDA_VISIBLE_DEVICES to the GPU it assigned: that GPU is cuda:0 inside the task, whatever
    # index the config names (cuda:1 there would be a second GPU the task was not given)
    assert r.overrides == ("model.device=cuda",)
    assert visible_devices_env(r.num_gpus) == {}  # a GPU task keeps what Ray set
    assert r.ray_options() == {"num_cpus": 1.0, "num_gpus": 1.0}


def test_auto_device_follows_the_cluster():
    gpu = task_resources("stream3r", "auto", "auto", CPU, cluster_gpus=4)
    assert gpu.num_gpus == 1.0 and gpu.overrides == ("model.device=cuda",)
    cpu = task_resources("stream3r", "auto", "auto", CPU, cluster_gpus=0)
    assert cpu.num_gpus == 0 and cpu.overrides == ("model.device=cpu",)
    assert visible_devices_env(cpu.num_gpus) == {"CUDA_VISIBLE_DEVICES": ""}  # no GPU it was not given
    assert task_resources("stream3r", "cpu", "auto", CPU, cluster_gpus=8).num_gpus == 0
    mps = task_resources("stream3r", "mps", "auto", CPU, cluster_gpus=0)
    assert mps.num_gpus == 0 and mps.overrides == ()


def test_fractional_gpus_cpus_and_memory_come_from_the_cluster_section():
    opts = ClusterOptions(gpus_per_task=0.25, cpus_per_task=2, memory_gb=3.5)
    r = task_resources("stream3r", "cuda", "auto", opts, cluster_gpus=1)
    assert r.ray_options() == {"num_cpus": 2.0, "num_gpus": 0.25, "memory": 3_500_000_000}  # 4 runs share a GPU


def test_rgbd_path_is_cpu_cores_unless_asked_for_cuda():
    r = task_resources("rgbd", "auto", "auto", ClusterOptions(cpus_per_task=1), cluster_gpus=8)
    assert (r.num_gpus, r.num_cpus, r.overrides) == (0.0, 1.0, ())
    assert visible_devices_env(r.num_gpus) == {"CUDA_VISIBLE_DEVICES": ""}  # Open3D 'auto' must not take one
    g = task_resources("rgbd", "auto", "cuda", ClusterOptions(gpus_per_task=0.5), cluster_gpus=1)
    assert (g.num_gpus, g.overrides) == (0.5, ("rgbd.device=cuda",))


def test_use_gpu_overrides_the_derivation_and_plugin_frontends_are_cpu():
    assert task_resources("stream3r", "cuda", "auto", ClusterOptions(use_gpu="no"), 4).num_gpus == 0
    assert task_resources("myfrontend", "auto", "auto", CPU, 4).num_gpus == 0
    r = task_resources("myfrontend", "auto", "auto", ClusterOptions(use_gpu="yes"), 4)
    assert r.num_gpus == 1.0 and r.overrides == ()  # a plugin's device keys are its own


def test_cluster_section_is_validated_with_the_key_named(tmp_path):
    cfg = load_config("tum.yaml", overrides=["cluster.gpus_per_task=0.5", "cluster.max_retries=3"])
    assert cfg.sections["cluster"] == {"gpus_per_task": 0.5, "max_retries": 3}
    with pytest.raises(Exception, match="gpus_per_task"):
        ClusterOptions.model_validate({"gpus_per_task": 0})
    rc = cli_main(["bench", "--config", "tum.yaml", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                   "--set", "cluster.gpus_per_tsk=1", "--workers", "1"])
    assert rc == 1


def test_workers_without_ray_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if the extra were not installed
    (tmp_path / "tum" / "rgbd_dataset_freiburg3_walking_xyz").mkdir(parents=True)
    rc = cli_main(["bench", "--config", "tum.yaml", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                   "--workers", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and "pip install 'slam3r[cluster]'" in err[0] and "Ray" in err[0]
    rc = cli_main(["batch", "--config", "tum.yaml", str(tmp_path), "--out", str(tmp_path / "b"), "--workers", "2"])
    assert rc == 1 and "slam3r[cluster]" in capsys.readouterr().err


def test_workers_must_be_a_positive_whole_number(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["bench", "--config", "tum.yaml", "--workers", "0"])
    assert e.value.code == 2 and "--workers must be at least 1" in capsys.readouterr().err


def test_cluster_extra_asks_for_the_measured_lowest_ray():
    from tests.test_packaging import _extra

    (req,) = _extra("cluster")
    assert req.name == "ray" and req.extras == {"default"}  # the dashboard and the Ray Client come with [default]
    assert str(req.specifier) == ">=2.10"  # 2.10.0 passes these tests; 2.9 does not import (benchmarks/NOTES.md)
    from slam3r_plugins.cluster import MIN_RAY

    assert MIN_RAY == "2.10"


def test_installed_ray_satisfies_the_extra():
    pytest.importorskip("ray")
    import importlib.metadata

    from packaging.version import Version

    from tests.test_packaging import _extra

    (req,) = _extra("cluster")
    assert req.specifier.contains(Version(importlib.metadata.version("ray")))


def test_a_local_ray_without_a_gpu_refuses_gpu_runs_at_once(tmp_path, monkeypatch, capsys):
    """A local Ray that has no GPU: a config that needs one is one line before any task (instead of
    tasks that wait for a GPU forever). Ray itself is replaced by a stand-in: nothing starts."""
    import contextlib

    from slam3r_plugins import cluster

    @contextlib.contextmanager
    def no_gpu(address, workers, opts):
        yield cluster.Connection(ray=None, address="local", started_here=True, resources={"CPU": 2.0})

    monkeypatch.setattr(cluster, "import_ray", lambda: None)
    monkeypatch.setattr(cluster, "connect", no_gpu)
    monkeypatch.setattr(cluster, "run_all", lambda *a, **k: pytest.fail("no task may be submitted"))
    (tmp_path / "tum" / "rgbd_dataset_freiburg3_walking_xyz").mkdir(parents=True)
    rc = cli_main(["bench", "--config", "tum.yaml", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                   "--set", "model.device=cuda", "--workers", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and "need 1 GPU each (frontend stream3r on model.device cuda)" in err and "no GPU" in err


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="per-run peak RSS needs Linux /proc")
def test_a_runs_peak_memory_is_its_own_when_runs_share_a_process():
    """The sequential bench and a reused Ray worker run several sequences in one process: each row's
    peak is measured from the start of its run (VmHWM reset), not over the process's life."""
    import numpy as np

    from slam3r_plugins.bench import _peak_memory, _reset_peak

    _reset_peak()
    block = np.ones(200_000_000 // 8)  # 200 MB, every page touched
    with_block, kind = _peak_memory()
    del block  # a large block goes back to the kernel at once (mmap)
    _reset_peak()
    after, _ = _peak_memory()
    assert with_block - after > 0.15 and "reset per run" in kind
