"""Random override sets through the API, with settings read from another thread the whole time.

Seeded, so a failure reproduces: every invalid set is a 422 naming exactly its bad keys, every valid one
generates with its values in effect, a reader never sees a request's overrides, and at the end the stored options
and config.json are byte-for-byte what they were.
"""

from __future__ import annotations

import json
import random
import threading

from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from modules import jobs, processing, shared
from modules.api.api import Api

SEED = 20240727
REQUESTS = 100

# (key, value, valid?) — the oracle: which values the options store must accept as overrides.
CANDIDATES = [
    ("CLIP_stop_at_last_layers", 2, True), ("CLIP_stop_at_last_layers", 12, True),
    ("CLIP_stop_at_last_layers", 3.0, True), ("CLIP_stop_at_last_layers", 0, False),
    ("CLIP_stop_at_last_layers", 13, False), ("CLIP_stop_at_last_layers", "2", False),
    ("CLIP_stop_at_last_layers", 2.5, False), ("CLIP_stop_at_last_layers", True, False),
    ("eta_noise_seed_delta", 31337, True), ("eta_noise_seed_delta", -1, False),
    ("randn_source", "GPU", True), ("randn_source", "TPU", False),
    ("samples_format", "jpg", True), ("samples_format", "gif", False),
    ("sd_model_checkpoint", "beta", True), ("sd_model_checkpoint", "alpha.safetensors", True),
    ("sd_model_checkpoint", "gamma", False), ("sd_model_checkpoint", None, True),
    ("sd_vae", "sharp.safetensors", True), ("sd_vae", "None", True), ("sd_vae", "blurry.pt", False),
    ("add_model_hash_to_info", False, True), ("add_model_hash_to_info", "no", False),
    ("outdir_samples", "/tmp/elsewhere", False),  # restricted: paths never come from requests
    ("api_max_steps", 1000, False),  # restricted: a client cannot lift its own limits
    ("not_an_option", 1, False), ("Clip_stop_at_last_layers", 2, False),
]


def test_random_override_sets_never_leak(data_dir, fake_models, monkeypatch):
    seen_clip_skip = []

    def sample_batch(p, model, prompts, negative_prompts, seeds, subseeds):
        seen_clip_skip.append(shared.opts.CLIP_stop_at_last_layers)
        return [Image.new("RGB", (p.width, p.height)) for _ in seeds]

    monkeypatch.setattr(processing.StableDiffusionProcessing, "sample_batch", sample_batch)
    # The fake VAE file holds no weights: stand in for loading it.
    monkeypatch.setattr("modules.sd_models_loader.load_vae", lambda path, device, dtype: ("vae", path))
    app = FastAPI()
    Api(app)
    rng = random.Random(SEED)
    with TestClient(app) as client:
        assert client.post("/sdapi/v1/options", json={"eta_noise_seed_delta": 7, "samples_format": "png"}).json() \
            is None
        config = data_dir / "config.json"
        stored_before, file_before = shared.opts.stored(), config.read_bytes()
        options_before = client.get("/sdapi/v1/options").json()

        stop = threading.Event()
        reader_failures: list = []
        reads = 0

        def reader():
            nonlocal reads
            while not stop.is_set():
                current = client.get("/sdapi/v1/options").json()
                reads += 1
                if current != options_before:
                    reader_failures.append({k: v for k, v in current.items() if options_before.get(k) != v})

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for i in range(REQUESTS):
                chosen = dict((k, (v, ok)) for k, v, ok in rng.sample(CANDIDATES, rng.randint(1, 4)))
                overrides = {k: v for k, (v, _) in chosen.items()}
                bad = {k for k, (_, ok) in chosen.items() if not ok}
                before = len(seen_clip_skip)
                r = client.post("/sdapi/v1/txt2img", json={
                    "prompt": f"request {i}", "width": 8, "height": 8, "steps": 1, "seed": i,
                    "override_settings": overrides})
                context = f"request {i} with {overrides}"
                if bad:
                    assert r.status_code == 422, context
                    assert set(r.json()["errors"]) == bad, context
                    assert len(seen_clip_skip) == before, context  # nothing ran
                else:
                    assert r.status_code == 200, (context, r.text)
                    expected_clip_skip = int(overrides.get("CLIP_stop_at_last_layers", 1))
                    assert seen_clip_skip[before:] == [expected_clip_skip], context
                    infotext = json.loads(r.json()["info"])["infotexts"][0]
                    assert ("Clip skip" in infotext) == (expected_clip_skip > 1), context
        finally:
            stop.set()
            thread.join(10)

    assert reads > 0 and reader_failures == []
    assert shared.opts.stored() == stored_before and config.read_bytes() == file_before
    assert shared.opts.layers() == () and not jobs.state.busy
