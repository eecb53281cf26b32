"""``ocap demo``: the whole loop on the embedded default, in a temporary directory.

It starts ``ocapd`` as a subprocess on a base model (the shipped fmnist-cnn, or ``--model``), then
replays labelled images (Fashion-MNIST's **test** images, or ``--data``: an image folder or an .npz
that must fit the model) to it over its control socket in a skewed class mix, as a camera in a shop
might see them. The daemon never sees a label; the replay keeps them to score the models at the end.
Windows are seconds instead of minutes. Once the personalized model has passed probation, a class
from outside the mix joins it to show drift and the revert; when nothing passes probation, the demo
says why (the daemon's last outcome: a gate rejection, a search that found nothing) and stops. It
prints a status line while it runs, then a before/after table, and writes a report (Markdown and
plots) to ``--report`` or report/ in its work directory.

Half of the images of each class are replayed; accuracy is measured on the other half, which the
daemon never saw, so the cached samples it fine-tuned on are not scored."""

import argparse
import logging
import math
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ocap_core import strict_json
from ocap_core.cli import add_command
from ocap_core.errors import OcapError
from ocap_service.event_kinds import Event

from .errors import DaemonError
from .launch import DaemonProcess, start_ocapd, wait_until
from .status import cut_words
from .supervisor import STARVED

if TYPE_CHECKING:
    from ocap_service.model_slot import LoadedModel

    from .demo_replay import Replay

log = logging.getLogger(__name__)

TEACHER_SHARE, MIN_CHECKS = 0.25, 100      # [drift]: the teacher's share of frames, checks a verdict needs
# [privacy] held_back_share: the default 0.2 at least, more where the data needs it (``held_back_share``):
# the demo replays 500 distinct images of each class, and a 1-point budget is judged on 300, 600 held back
HELD_BACK_SHARE = 0.2
MAX_HELD_BACK_SHARE = 0.55
HELD_BACK_MARGIN = 1.15     # the split is a hash of each image: hold back this much more than the floor
MIN_TRAIN_PER_CLASS = 48    # [personalize] min_samples_per_class of the demo's config
DEMO_INI = """\
# written by `ocap demo`: windows of seconds, a short fine-tuning budget
[daemon]
state_dir = {state}
cache_dir = {cache}
socket = {socket}
log_level = {log_level}

[model]
base = {model}
threads = 1

[log]
flush_interval = 1s

[stability]
window = {window}s
windows = 3
min_predictions = {min_predictions}
coverage = 0.90
min_share = 0.06
js_threshold = 0.15
max_classes = 5
check_interval = 1s

[personalize]
max_loss = {max_loss}
samples_per_class = 128
min_samples_per_class = {min_train}
epochs = {epochs}
time_budget = {budget}s
wall_limit = {wall_limit}s
cooldown = {cooldown}
daily_cap = {daily_cap}
threads = {threads}
rule = {rule}
nice = {nice}
max_serving_p99 = 1s

[gate]
min_speedup = 1.05
latency_runs = 100

[drift]
teacher_share = {teacher_share}
window = {drift_window}s
min_checks = {min_checks}
max_outside_share = 0.10
cooldown = {drift_cooldown}

[probation]
duration = {probation}s

[privacy]
held_back_share = {held_back_share}
"""


def demo_config(work: Path, model: str, rate: float, speed: float = 1.0, epochs: int = 15, budget: float = 160.0,
                threads: int = 0, log_level: str = "info", max_loss: float = 1.0, rule: str = "search",
                nice: int = 19, cooldown: str = "20s", daily_cap: int = 4, drift_cooldown: str = "60s",
                wall_limit: float = 3600.0, held_back: float = HELD_BACK_SHARE) -> str:
    """The demo's INI for a daemon in ``work`` fed ``rate`` frames per second: windows of seconds.
    ``threads`` 0 lets the worker take one per idle core; ``rule``, ``nice``, ``cooldown``,
    ``daily_cap`` and ``wall_limit`` (at least ``budget``) are the ``[personalize]`` keys (the
    benchmarks' short cycles use the fixed rule, the soak's many cycles lift the cap), ``drift_cooldown``
    is ``[drift] cooldown``, ``held_back`` ``[privacy] held_back_share`` (``held_back_share``)."""
    return DEMO_INI.format(state=work / "state", cache=work / "cache", socket=work / "ocap.sock", model=model,
                           log_level=log_level, window=max(2, round(4 / speed)),
                           min_predictions=max(40, int(rate * 4 / speed * 0.5)), epochs=epochs, budget=budget,
                           wall_limit=max(wall_limit, budget), threads=threads or "auto", max_loss=max_loss, rule=rule, nice=nice, cooldown=cooldown,
                           daily_cap=daily_cap, drift_cooldown=drift_cooldown, teacher_share=TEACHER_SHARE,
                           min_checks=MIN_CHECKS, drift_window=drift_window(rate, speed), probation=max(5, round(15 / speed)),
                           held_back_share=held_back, min_train=MIN_TRAIN_PER_CLASS)


def drift_window(rate: float, speed: float) -> int:
    """``[drift] window`` in seconds: 6 s shortened by ``speed``, but long enough to hold 1.5 times the
    checks a drift verdict needs at ``rate`` frames per second (at speed 2 and 120 frames/s, 3 s held 90
    of the 100 and the demo's drift was never declared)."""
    return max(3, round(6 / speed), math.ceil(1.5 * MIN_CHECKS / (TEACHER_SHARE * rate)))


BUSY_PHASES = ("personalizing", "gating", "probation")
GAVE_UP = {"kind": "gave up"}             # _wait_for's "past the deadline, nothing moving"


def _wait_for(daemon: DaemonProcess, kinds: Sequence[str], deadline: float, show: Callable[[], None],
              busy_until: float = 0.0) -> Optional[Dict[str, Any]]:
    """The latest event of ``kinds``, waiting until ``deadline``, or past it (up to ``busy_until``)
    while the daemon is still personalizing, gating or on probation: on a loaded machine the worker
    takes longer, and giving up on a loop that is still moving shows nothing. None if it never came."""
    def seen() -> Optional[Dict[str, Any]]:
        show()
        found = [e for e in daemon.events() if e["kind"] in kinds]
        if found:
            return found[-1]
        if time.time() >= deadline and daemon.request("status")["daemon"]["phase"] not in BUSY_PHASES:
            return GAVE_UP
        return None

    try:
        hit = wait_until(seen, max(deadline, busy_until) - time.time(), f"an event of {', '.join(kinds)}",
                         interval=1.0)
    except TimeoutError:
        return None
    return None if hit is GAVE_UP else hit


def _serve_after(replay: "Replay", t: float, seconds: float) -> None:
    """Let the replay go on until about ``seconds`` of its requests after ``t`` were answered, so the
    report shows the model serving after the verdict (up to 30 s on a loaded machine, then on anyway)."""
    try:
        wait_until(lambda: replay.answered_since(t) >= replay.rate * seconds, 30.0, "answers after the verdict")
    except TimeoutError:
        log.warning("the replay got fewer than %g answers in 30 s after the verdict", replay.rate * seconds)


def _why_not(daemon: DaemonProcess, verdict: Optional[Dict[str, Any]], waited: float) -> str:
    """Why no personalized model was established: the probation's verdict, else what the daemon last
    said about its personalization (a gate rejection, a search that found nothing), else the phase."""
    if verdict is not None:
        return f"probation failed: {verdict['detail'].get('reason', '')}"
    d = daemon.request("status")["daemon"]
    if d.get("last_outcome"):
        return d["last_outcome"]
    return f"nothing deployed and passed probation within {waited:.0f} s (the daemon is {d['phase']})"


def _restricted_accuracy(model_dir: str, x: np.ndarray, y: np.ndarray, classes: Sequence[int]) -> float:
    from ocap_core.preprocess import preprocess
    from ocap_service.model_slot import load_model

    m = load_model(model_dir)
    logits = m.session.run(["logits"], {m.session.get_inputs()[0].name: preprocess(x, m.card.input)})[0]
    cols = [m.card.class_ids.index(k) for k in classes]
    return float(np.mean(np.asarray(classes)[logits[:, cols].argmax(1)] == y))


def _latency_ms(m: "LoadedModel", x: np.ndarray, runs: int = 300) -> float:
    """Batch-1 latency of ``m`` over ``runs`` frames of ``x``: the median, or (a cascade, whose base
    answers some frames) the mean, what a frame costs on average."""
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        m.predict(x[i % len(x)])
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.mean(times) if m.base is not None else np.median(times))


FASHION = ("fashion-mnist", "fmnist")
AFTER_REVERT_S = 8.0
DEFAULT_MIX = ([0, 3, 7], [0.5, 0.3, 0.2], 9)          # Fashion-MNIST: T-shirt, dress, sneaker; then boot
MIN_IMAGES = 4                                       # per demo class: half replayed, half held out to score


def demo_mix(y: np.ndarray, args: argparse.Namespace, class_names: Sequence[str]) -> Tuple[List[int], List[float], int]:
    """The observed classes, their shares and the drift class: as given, else Fashion-MNIST's usual
    three, else a seeded pick of three classes with images in the data (shares 0.5, 0.3, 0.2) and a
    fourth to drift to. Every class must be one of the model's and have images in the data."""
    counts = np.bincount(y, minlength=len(class_names))
    present = [k for k in range(len(class_names)) if counts[k] >= MIN_IMAGES]
    if args.classes:
        classes = [int(k) for k in parse_ids(args.classes, "--classes")]
    elif args.data in FASHION and len(class_names) == 10:
        classes = list(DEFAULT_MIX[0])
    else:
        if len(present) < 4:
            raise OcapError(f"the data has {len(present)} classes with {MIN_IMAGES}+ images; the demo needs 4 "
                            f"(3 observed, 1 drifting in)")
        classes = sorted(int(k) for k in np.random.default_rng(args.seed).choice(present, 3, replace=False))
    shares = [float(v) for v in args.shares.split(",")] if args.shares else \
        ([0.5, 0.3, 0.2] if len(classes) == 3 else [1.0 / len(classes)] * len(classes))
    if args.drift_class is not None:
        extra = int(parse_ids(args.drift_class, "--drift-class")[0])
    elif args.data in FASHION and classes == DEFAULT_MIX[0]:
        extra = DEFAULT_MIX[2]
    else:
        others = [k for k in present if k not in classes]
        if not others:
            raise OcapError(f"no class with images is left to drift to besides {classes}")
        extra = others[0]
    if len(shares) != len(classes) or any(v <= 0 for v in shares):
        raise OcapError(f"--shares needs one positive share per class, got {shares} for classes {classes}")
    for k in classes + [extra]:
        if not 0 <= k < len(class_names):
            raise OcapError(f"class {k} is not one of the model's {len(class_names)} classes 0..{len(class_names) - 1}")
        if counts[k] < MIN_IMAGES:
            raise OcapError(f"class {k} ({class_names[k]}) has {counts[k]} images in the data; the demo needs "
                            f"{MIN_IMAGES} (half replayed, half held out to score)")
    if extra in classes:
        raise OcapError(f"--drift-class {extra} must be a class outside the observed ones {classes}")
    return classes, shares, extra


def held_back_share(max_loss: float, replayed: Dict[int, int]) -> float:
    """``[privacy] held_back_share`` for the distinct images replayed of the observed classes
    (``replayed``: class -> count): the default, or enough more that the cache holds back what the
    budget is judged on (``judged_images_needed``, twice, with a margin for the hash split), at most
    ``MAX_HELD_BACK_SHARE``: the rest must still fill each class's training samples."""
    from ocap_core.agreement import judged_images_needed

    total = sum(replayed.values())
    if max_loss <= 0 or total <= 0:
        return HELD_BACK_SHARE
    need = HELD_BACK_MARGIN * 2 * judged_images_needed(max_loss) / total
    return round(min(MAX_HELD_BACK_SHARE, max(HELD_BACK_SHARE, need)), 3)


def data_cannot_show(max_loss: float, replayed: Dict[int, int]) -> str:
    """Why the distinct images replayed of the observed classes (``replayed``: class -> count) cannot
    support a search within ``max_loss`` points, or "". The cache holds back a share of distinct frames
    (a hash of their pixels; ``held_back_share``) and the search judges on half of those; the others
    train, at least ``MIN_TRAIN_PER_CLASS`` of each class. Too few, and the daemon would observe until
    the demo gave up."""
    from ocap_core.agreement import budget_to_suggest, judged_images_needed

    if max_loss <= 0:
        return ""
    share = held_back_share(max_loss, replayed)
    total = sum(replayed.values())
    held = int(total * share)
    floor = 2 * judged_images_needed(max_loss)
    fewest = min(replayed.values()) if replayed else 0
    train_short = fewest * (1.0 - share) < MIN_TRAIN_PER_CLASS
    if held >= floor and not train_short:
        return ""
    if train_short and held >= floor:
        return (f"the demo replays as few as {fewest} distinct images of an observed class; holding back "
                f"{share:.0%} of them to judge a {max_loss:g}-point budget leaves fewer than the "
                f"{MIN_TRAIN_PER_CLASS} each class needs to train on: use a data set with more images of these "
                f"classes, or allow a larger --max-loss")
    most = int(total * (1.0 - MIN_TRAIN_PER_CLASS / max(fewest, 1))) if fewest > MIN_TRAIN_PER_CLASS else 0
    shown = budget_to_suggest(min(held, most) // 2)
    return (f"the demo replays {total} distinct images of the observed classes, of which about "
            f"{held} would be held back to judge the search (on half of them), and a {max_loss:g}-point budget "
            f"needs {floor}: use a data set with about {2 * int(np.ceil(HELD_BACK_MARGIN * floor / MAX_HELD_BACK_SHARE))} "
            f"images of these classes (the demo replays half of them and scores on the other half)"
            + (f", or allow --max-loss {shown:g} (what {min(held, most) // 2} judged images can judge)"
               if shown is not None else ""))


def parse_ids(text: str, flag: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OcapError(f"{flag} takes comma-separated class ids, got {text!r}") from None


def run_demo(args: argparse.Namespace) -> int:
    from ocap_core.data import load_dataset
    from ocap_core.package import open_package, resolve_model, shipped_models
    from ocap_service.sources import data_misfit

    from .demo_replay import Replay

    try:
        base_card = open_package(str(resolve_model(args.model))).card
        test = load_dataset(args.data, args.split or ("test" if args.data in FASHION else "all"),
                            class_names=base_card.class_names)
        misfit = data_misfit(test.x, test.y, base_card)
        if misfit:
            raise OcapError(f"{args.data}: {misfit}")
        classes, shares, extra = demo_mix(test.y, args, base_card.class_names)
    except OcapError as e:
        print(f"ocap demo: {e}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    replay_x: Dict[int, np.ndarray] = {}
    held: List[int] = []
    for k in np.unique(test.y).tolist():
        idx = rng.permutation(np.flatnonzero(test.y == k))
        replay_x[k] = test.x[idx[: len(idx) // 2]]
        held.extend(idx[len(idx) // 2:].tolist())
    held_idx = np.asarray(sorted(held))
    replayed = {k: len(replay_x[k]) for k in classes}
    short = data_cannot_show(args.max_loss, replayed)
    if short:
        print(f"ocap demo: {args.data}: {short}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ocap-demo-"))
    out = Path(args.report) if args.report else work / "report"
    out.mkdir(parents=True, exist_ok=True)
    speed = args.speed
    ini = work / "ocap.ini"
    model = args.model if args.model in shipped_models() else str(resolve_model(args.model).resolve())
    ini.write_text(demo_config(work, model, args.rate, speed, args.epochs, args.budget, args.threads,
                               max_loss=args.max_loss, nice=args.nice,
                               # a worker kept waiting ends, saying so, before the demo gives up (1.5x)
                               wall_limit=args.max_seconds, held_back=held_back_share(args.max_loss, replayed)),
                   encoding="utf-8")
    # SIGTERM (a kill, a CI timeout) must reach the `with daemon` below, or the daemon outlives the demo
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.time()
    try:
        daemon = start_ocapd(ini, work / "ocap.sock", work / "ocapd.log")
    except DaemonError as e:
        print(f"ocap demo: ocapd did not start: {e}", file=sys.stderr)
        return 1
    is_tty = sys.stdout.isatty()

    def show() -> None:
        try:
            d = daemon.request("status")["daemon"]
        except Exception:                  # the daemon is starting or stopping
            return
        line = f"[{time.time() - t_start:5.0f} s] {d['status_line']}"
        print(("\r" + cut_words(line, 150).ljust(150)) if is_tty else line, end="" if is_tty else "\n", flush=True)

    with daemon:
        mix1 = dict(zip(classes, shares))
        print(f"ocapd is up ({args.model}); replaying images of {args.data} of classes {classes} at {args.rate:g}/s, "
              f"shares {shares}; work dir {work}")
        replay = Replay(daemon.socket, replay_x, args.rate, seed=args.seed)
        replay.set_mix(mix1)
        replay.start()
        try:
            passed = _wait_for(daemon, [Event.PROBATION_PASSED, Event.PROBATION_FAILED], time.time() + args.max_seconds * 0.7,
                               show, busy_until=time.time() + args.max_seconds * 1.5)
            t_drift, reverted, gave_up = time.time(), None, None
            if passed is not None and passed["kind"] == Event.PROBATION_PASSED:
                # the drift class joins only once the personalized model is established, as in the field
                replay.set_mix({**mix1, extra: args.drift_share})
                print(("\n" if is_tty else "") + f"class {extra} joins the mix at {args.drift_share:g} of the weight")
                reverted = _wait_for(daemon, [Event.DRIFT], time.time() + max(30.0, args.max_seconds * 0.3), show)
            else:
                gave_up = _why_not(daemon, passed, args.max_seconds * 0.7)
                print(("\n" if is_tty else "") + f"no drift shown: {gave_up}")
            # after the revert, a few seconds of the drifted mix served by the base: the report's plot shows it
            _serve_after(replay, time.time(), seconds=AFTER_REVERT_S if reverted is not None else 2.0)
        finally:
            replay.stop()
        events = daemon.events()
        status = daemon.request("status")
    print("" if not is_tty else "\n", end="")
    deployed = [e for e in events if e["kind"] == Event.DEPLOY]
    base_dir = str(resolve_model(args.model))
    x_h, y_h = test.x[held_idx], test.y[held_idx]
    mine = np.isin(y_h, classes)
    rows = [_model_row("base " + open_package(base_dir).card.name, base_dir, x_h[mine], y_h[mine])]
    # the fair reference: the base model told that only the observed classes occur (argmax over them)
    rows.append(dict(rows[0], model="base, told the classes",
                     accuracy=_restricted_accuracy(base_dir, x_h[mine], y_h[mine], classes)))
    if deployed:
        pdir = str(work / "state" / "models" / deployed[-1]["detail"]["version"])
        rows.append(_model_row("personalized", pdir, x_h[mine], y_h[mine]))
    served_on = providers_by_version(events)
    for r in rows:                          # what the daemon ran each model on (accuracy and latency: the CPU here)
        r["providers"] = served_on.get(r["version"], [])
    requests = len(replay.log)
    failed = sum(1 for r in replay.log if not r[4])
    first = next((e["ts"] for e in events if e["kind"] == Event.PERSONALIZE_STARTED), None)
    done = next((e["ts"] for e in events if e["kind"] == Event.PERSONALIZE_FINISHED), None)
    stages = []
    for e in events:                        # the first personalization's stages: seconds, worker peak RSS
        if e["kind"] == Event.PERSONALIZE_PROGRESS and first is not None and first <= e["ts"] <= (done or 1e18):
            stages.append({k: e["detail"].get(k) for k in ("stage", "seconds", "peak_rss_mb")})
    summary = {"seconds": round(time.time() - t_start, 1), "requests": requests, "failed": failed,
               "stages": stages, "worker_s": round(done - first, 1) if first and done else None,
               "served_by_daemon": status["requests"], "deployed": bool(deployed),
               "probation": passed["kind"] if passed else None, "drift_reverted": reverted is not None,
               "models": rows, "classes": classes, "drift_class": extra, "work_dir": str(work), "gave_up": gave_up,
               "retried": _retried(events, deployed),
               "search": _search_of(rows[-1]["path"]) if deployed else None, "nice": args.nice}
    _print_summary(summary)
    from .demo_report import write_report

    write_report(out, summary, replay.log, events, t_start, t_drift)
    print(f"report: {out / 'report.md'}")
    if not args.keep:
        shutil.rmtree(work / "state", ignore_errors=True)
        shutil.rmtree(work / "cache", ignore_errors=True)
    ok = bool(deployed) and reverted is not None and failed == 0
    if args.json:
        print(strict_json.dumps(summary, indent=2))
    return 0 if ok else 1


def _model_row(name: str, model_dir: str, x: np.ndarray, y: np.ndarray) -> Dict[str, Any]:
    from ocap_core.cascade import macs_per_frame
    from ocap_core.package import ONNX
    from ocap_service.model_slot import load_model

    model = load_model(model_dir)                  # verifies the package once
    card = model.card
    pred = model.predict(x)
    row = {"model": name, "version": card.version, "classes": card.class_ids, "path": model_dir,
           "accuracy": float(np.mean(pred.class_ids == y)), "macs": card.metrics.get("macs"),
           "latency_ms": _latency_ms(model, x), "size_mb": (model.path / ONNX).stat().st_size / 2 ** 20,
           "images": int(len(y))}
    if pred.fell_back is not None:          # a cascade: what a frame of these costs, its base included
        share = float(np.mean(pred.fell_back))
        row.update(fallback_share=share, tau=model.tau, specialist_macs=row["macs"],
                   macs=macs_per_frame(row["macs"], card.metrics["base_macs"], share))
    return row


def providers_by_version(events: List[Dict[str, Any]]) -> Dict[str, List[str]]:
    """The execution providers the daemon ran each model version on, from its events (oldest first):
    ``serving_started`` for the first model, ``swap`` and ``deploy`` for the later ones."""
    out: Dict[str, List[str]] = {}
    for e in events:
        d = e["detail"]
        version = {Event.SERVING_STARTED: d.get("model"), Event.SWAP: d.get("to"), Event.DEPLOY: d.get("version")}.get(e["kind"])
        if version and d.get("providers"):
            out[version] = list(d["providers"])
    return out


def _search_of(model_dir: str) -> Optional[Dict[str, Any]]:
    """The operating-point search recorded in a personalized package's card (None for a fixed rule)."""
    from ocap_core.package import open_package

    prov = open_package(model_dir).card.provenance
    if not prov.get("search"):
        return None
    return {"max_loss": prov["spec"]["search"]["max_loss"], "path": prov["search"]["path"],
            "stopped": prov["search"]["stopped"]}


def _retried(events: List[Dict[str, Any]], deployed: List[Dict[str, Any]]) -> List[str]:
    """Why each personalization before the first deploy did not end in one (a run that failed, a
    candidate the gate refused): the daemon tried again after its cooldown."""
    end = deployed[0]["ts"] if deployed else float("inf")
    out = []
    for e in events:
        if e["ts"] < end and e["kind"] == Event.PERSONALIZE_FAILED:
            out.append(str(e["detail"].get("reason") or e["detail"].get("error") or e["detail"].get("state", "failed")))
        elif e["ts"] < end and e["kind"] == Event.GATE and not e["detail"].get("passed"):
            d = e["detail"]
            what = f" ({d['macs']:,} MACs, judged on {d['samples']} held-back frames)" if d.get("macs") and d.get("samples") else ""
            out.append(f"the gate refused the candidate{what}: {d.get('reason', '')}")
    return out


def level_text(row: Dict[str, Any]) -> str:
    """One level of the search's path for the summary: its MAC reduction and loss alone, and where the
    base answered the frames it doubted, how many and what that lost (a level within the budget that
    was not cheaper than the point already found is a step of the ladder, not a point taken)."""
    head = f"{row['mac_reduction']:.1f}x -{row['loss_pp']:.2f} pp"
    c = row.get("cascade") or {}
    fell = f"{100 * c.get('fallback_share', 0.0):.0f}% to the base -{c.get('loss_pp', 0.0):.2f} pp"
    ok = "ok" if row.get("cheaper", True) else "within, not cheaper"
    if row.get("accepted_as") == "cascade":
        return f"{head}, with {fell} {ok}"
    if row["accepted"]:
        return f"{head} {ok}"
    return f"{head} over"           # (a level whose cascade kept the budget is accepted as a cascade)


def _print_summary(s: Dict[str, Any]) -> None:
    print(f"\nobserved classes {s['classes']} (accuracy on {s['models'][0]['images']} held-out test images of them)")
    print(f"{'model':<22}{'accuracy':>9}{'MACs':>12}{'latency':>11}{'size':>9}")
    for r in s["models"]:
        print(f"{r['model']:<22}{100 * r['accuracy']:8.2f}%{r['macs'] / 1e6:10.2f} M{r['latency_ms']:9.3f} ms"
              f"{r['size_mb']:7.2f} MB")
    if len(s["models"]) == 3:
        b, told, p = s["models"]
        per = " per frame" if "fallback_share" in p else ""
        print(f"personalized: {b['macs'] / p['macs']:.2f}x fewer MACs{per}, {b['latency_ms'] / p['latency_ms']:.2f}x "
              f"faster, {100 * (p['accuracy'] - told['accuracy']):+.2f} pp accuracy against the base told the classes")
        if "fallback_share" in p:
            print(f"  a cascade: the base answered the {100 * p['fallback_share']:.1f}% of frames the specialist "
                  f"({p['specialist_macs'] / 1e6:.2f} M MACs) was unsure of (top probability under {p['tau']:.3f})")
        for why in s.get("retried") or []:
            print(f"an earlier try did not deploy ({cut_words(why.splitlines()[0] if why else why, 160)}); the daemon "
                  "tried again after its cooldown")
        if s.get("search"):
            print("operating point searched within " + f"{s['search']['max_loss']:g} pp: " + ", ".join(
                level_text(r) for r in s["search"]["path"]))
    else:
        print("no personalized model was deployed (see the events in the report)")
    if s.get("gave_up"):
        print(f"the loop stopped short: {s['gave_up']}")
        if STARVED in s["gave_up"] and s.get("nice"):
            print(f"other work kept every core busy, and the worker at nice {s['nice']} yields to it: "
                  f"--nice 0 lets it compete")
    print(f"requests {s['requests']} sent, {s['failed']} failed; probation: {s['probation']}; drift revert: "
          f"{'yes' if s['drift_reverted'] else 'no'}; {s['seconds']:.0f} s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="fmnist-cnn", help="base model: a shipped name or a package directory")
    p.add_argument("--data", default="fashion-mnist",
                   help="images to replay and score on: fashion-mnist, an image folder or an .npz (labelled)")
    p.add_argument("--split", choices=("train", "val", "test", "all"),
                   help="which images of --data (default: test for fashion-mnist, else all: the demo holds "
                        "half of each class back to score on)")
    p.add_argument("--classes", help="the observed classes of the skewed mix (default: 0,3,7 on Fashion-MNIST, "
                                     "else a seeded pick of 3 classes present in the data)")
    p.add_argument("--shares", help="their shares of the frames (default 0.5,0.3,0.2)")
    p.add_argument("--drift-class", help="the class that joins once probation has passed, to show drift "
                                         "(default: 9 on Fashion-MNIST, else another class present)")
    p.add_argument("--drift-share", type=float, default=0.3, help="its weight relative to the mix's 1")
    p.add_argument("--rate", type=float, default=120.0, help="frames per second sent to the daemon")
    p.add_argument("--speed", type=float, default=1.0, help="shorter windows and probation when > 1")
    p.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs of the chosen model at most")
    p.add_argument("--budget", type=float, default=160.0,
                   help="personalization time budget, seconds of work (the operating-point search gets half)")
    p.add_argument("--max-loss", type=float, default=1.0,
                   help="points of held-back agreement with the base the search may give up")
    p.add_argument("--threads", type=int, default=1,
                   help="worker threads at most (0: one per idle core); torch's results depend on the thread "
                        "count, so one thread gives the same operating point on an idle and a busy machine")
    p.add_argument("--nice", type=int, default=19, choices=range(20), metavar="0..19",
                   help="the worker's niceness, as [personalize] nice (19: personalization yields to all other "
                        "work; where other processes keep every core busy, 0 lets it finish within --max-seconds)")
    p.add_argument("--max-seconds", type=float, default=270.0,
                   help="give up on the loop after this long, or up to 1.5 times it while the daemon is still "
                        "personalizing, gating or on probation; also the worker's wall limit")
    p.add_argument("--seed", type=int, default=0, help="seed of the replayed frames, the sampling and the worker")
    p.add_argument("--report", "--out", dest="report",
                   help="report directory (default: report/ in the work directory the demo prints)")
    p.add_argument("--keep", action="store_true", help="keep the daemon's state and cache directories")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")


HELP = "run the whole loop: ocapd on the shipped model, a replayed skewed class mix"


def add_commands(sub: Any) -> None:
    """``ocap demo``, added to the ``ocap`` parser's subcommands (``ocap_cli`` composes the parser)."""
    add_command(sub, "demo", add_arguments, run_demo, HELP)

