"""The serving plane as the control plane sees it: the handful of things the policy (trigger, controller,
deployer, status, metrics) reads from and asks of ``ocap_service.server.Server``, and nothing else. The policy
is written against this face, so its unit tests run on a stand-in (tests/ocap_daemon/fake_serving.py) with an
injected clock, without onnxruntime; the composition root (``ocap_daemon.main``) alone reaches the server's
parts (its socket, metrics registry, status parts). ``tests/ocap_daemon/test_serving_plane.py`` checks that
the policy's modules use only these names and that ``Server`` has each of them."""

from typing import Dict

# what each member is; the stand-in and Server implement them with these signatures
MEMBERS: Dict[str, str] = {
    "served": "property: the model answering requests (version, class_ids, card)",
    "base": "attribute: the base model (the teacher while another model serves)",
    "teacher": "property: the base model while another model serves, else None",
    "window": "(seconds, origin='served', since=None) -> (class histogram, low-confidence count)",
    "series": "(window, windows, origin='served', since=None) -> histograms of whole windows, oldest first",
    "teacher_counts": "() -> {'checked', 'inside', 'disagreed'} since the last swap",
    "cache_counts": "() -> {'train': {class: n}, 'val': {class: n}}",
    "cached": "(split) -> (images, classes) of the cached samples",
    "forget_samples": "() -> how many cached samples were deleted",
    "request_stats": "() -> totals, rates and latency percentiles of the requests served",
    "record": "(kind, **detail): add an event (ocap_service.event_kinds.Event)",
    "recent_events": "(limit, kinds=None, since=None) -> events, newest first",
    "event_counts": "(kinds, split='') -> {(kind, detail value): n}",
    "load_args": "() -> how a model is loaded here (providers, threads, engine cache)",
    "install": "(loaded model, why) -> (ok, reason): serve a model the gate already loaded",
    "swap": "(path, why) -> (ok, reason): load a package and serve it",
    "revert_to_base": "(why) -> (ok, reason): serve the base model",
    "set_model_status": "(version, status): mark a version in the models table",
}
