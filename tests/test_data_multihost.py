"""Two real JAX processes (jax.distributed on loopback, one CPU device each) read their own halves and build
global batches with make_array_from_process_local_data: together they equal the single-host batches, and
evaluation sees every video exactly once. Also: batches on a 2x2 device mesh in bfloat16."""

import json
import os
import socket
import textwrap

import numpy as np
from conftest import SBDATA_VIDEOS
from helpers import run_python, start_python

from smallbig_jax.data import lists, pipeline, transforms
from smallbig_jax.data.config import default_data_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_platforms", "cpu")
    pid, port, cfg_json, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import ml_collections, numpy as np
    from jax.experimental import multihost_utils
    from smallbig_jax.data import pipeline
    from smallbig_jax.sharding import make_mesh
    cfg = ml_collections.ConfigDict(json.loads(cfg_json))
    mesh = make_mesh()
    train = pipeline.make_train_loader(cfg, num_classes=12, global_batch_size=4, seed=0, mesh=mesh)
    res = {"train_labels": [], "train_clip_sums": []}
    for _ in range(3):
      b = next(train)
      assert b["clip"].shape == (4, 4, 32, 32, 3) and len(b["clip"].addressable_shards) == 1
      res["train_labels"].append(multihost_utils.process_allgather(b["label"], tiled=True).tolist())
      res["train_clip_sums"].append(multihost_utils.process_allgather(b["clip"].sum(axis=(1, 2, 3, 4)),
                                                                      tiled=True).tolist())
    train.close()
    vids, masks = [], []
    for b in pipeline.make_eval_loader(cfg, num_classes=12, global_batch_size=8, mesh=mesh):
      vids += multihost_utils.process_allgather(b["video_index"], tiled=True).tolist()
      masks += multihost_utils.process_allgather(b["mask"], tiled=True).tolist()
    res["eval_video_index"], res["eval_mask"] = vids, masks
    json.dump(res, open(out, "w"))
    jax.distributed.shutdown()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_build_the_single_host_batches(sbdata_dir, tmp_path):
    lists.write_frame_list(str(tmp_path / "idx.txt"), [(f"vid{v:02d}", 16, v) for v in range(SBDATA_VIDEOS)])
    cfg = default_data_config()
    cfg.format, cfg.root = "frames", f"{sbdata_dir}/frames"
    cfg.train_list = cfg.val_list = str(tmp_path / "idx.txt")
    cfg.num_frames, cfg.stride, cfg.crop_size, cfg.scale_size = 4, 2, 32, 40
    cfg.device_prefetch = 1
    (tmp_path / "worker.py").write_text(WORKER)
    port = _free_port()
    procs = [
        start_python(
            tmp_path / "worker.py",
            i,
            port,
            json.dumps(cfg.to_dict()),
            tmp_path / f"out{i}.json",
            env={"XLA_FLAGS": ""},
            merge_stderr=True,
        )
        for i in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    res = [json.load(open(tmp_path / f"out{i}.json")) for i in range(2)]
    assert res[0] == res[1]  # Both processes see the same global arrays.
    ref = list(zip(range(3), iter(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=4, seed=0))))
    for k, b in ref:
        # Process 0 holds stream positions 0, 2 of the batch (rows 0-1), process 1 positions 1, 3 (rows 2-3).
        order = np.r_[0:4:2, 1:4:2]
        assert res[0]["train_labels"][k] == b["label"][order].tolist()
        sums = transforms.normalize(b["clip"]).sum(axis=(1, 2, 3, 4))[order]
        np.testing.assert_allclose(res[0]["train_clip_sums"][k], sums, rtol=1e-4)
    vids, mask = np.array(res[0]["eval_video_index"]), np.array(res[0]["eval_mask"])
    assert len(vids) == 16 and mask.sum() == 12
    assert sorted(vids[mask]) == list(range(12)) and np.all(vids[~mask] == -1)


SHARDED = textwrap.dedent("""
    import json, sys
    import jax, ml_collections, numpy as np
    from smallbig_jax.data import pipeline, transforms
    cfg = ml_collections.ConfigDict(json.loads(sys.argv[1]))
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    loader = pipeline.make_train_loader(cfg, num_classes=12, global_batch_size=8, seed=0, mesh=mesh)
    b = next(loader)
    loader.close()
    ref = next(iter(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=8, seed=0)))
    assert len(jax.devices()) == 4 and b["clip"].dtype == jax.numpy.bfloat16, (jax.devices(), b["clip"].dtype)
    assert b["clip"].sharding.spec[0] == "data" and b["clip"].addressable_shards[0].data.shape[0] == 4
    np.testing.assert_allclose(np.asarray(b["clip"], np.float32), transforms.normalize(ref["clip"]), atol=0.02)
    np.testing.assert_array_equal(np.asarray(b["label"]), ref["label"])
    print("ok")
""")


def test_batches_sharded_over_a_device_mesh_in_bfloat16(sbdata_dir, tmp_path):
    cfg = default_data_config()
    cfg.format, cfg.root, cfg.train_list = "frames", f"{sbdata_dir}/frames", f"{sbdata_dir}/frames.txt"
    cfg.num_frames, cfg.stride, cfg.crop_size, cfg.dtype = 4, 2, 32, "bfloat16"
    (tmp_path / "sharded.py").write_text(SHARDED)
    r = run_python(
        tmp_path / "sharded.py",
        json.dumps(cfg.to_dict()),
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
        timeout=600,
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]
