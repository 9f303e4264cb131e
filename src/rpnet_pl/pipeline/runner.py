"""The whole chain as a readable list of steps, each one command with named outputs in a run folder.

``runs/<experiment>/<step>/`` holds each step's outputs, its resolved ``config.yaml`` and its
``log.txt``. A step is complete when its ``.done`` marker exists (written last, atomically); the marker records
what made the outputs (:mod:`rpnet_pl.pipeline.provenance`), and a complete step planned with other settings
or inputs is an error before any work (``--force STEP`` re-runs it and every step after it from
scratch). One pipeline writes into a run folder at a time (:mod:`rpnet_pl.pipeline.run_lock`). A re-run skips
complete steps, resumes an interrupted training step from ``checkpoints/last.ckpt``
and an interrupted per-image step from the files it already wrote (corrupt ones are redone). A
failure stops the chain with the step named, the cause (the last error line of its log) and the
log path; nothing downstream runs. Progress lines of long steps are echoed to the terminal.

With ``seed=k`` the run folder is ``runs/<experiment>/seed<k>/``: every training stage gets
``seed_everything: k`` and ``data.seed: k``, and each seed is its own run (resumed and skipped on
its own). A step whose split is optional (the test export) is skipped with one line when the
dataset has no such split.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rpnet_pl.pipeline import layout, provenance
from rpnet_pl.pipeline.config import DEFAULT_DATASET, DEFAULT_ROOT, dump_yaml, section
from rpnet_pl.pipeline.signatures import fit_config
from rpnet_pl.utils.errors import CheckpointError, ConfigError, Stopped
from rpnet_pl.pipeline.seeds import seed_dir_name
from rpnet_pl.pipeline.registry import STEP_ORDER, STEPS, StepKind, output_path, unknown_steps

log = logging.getLogger("rpnet_pl.pipeline")  # the name its lines have always had (the runner was rpnet_pl.pipeline)


class StepFailed(RuntimeError):
    """A step exited non-zero; the message names the step and its log."""


@dataclass
class PlannedStep:
    """One step of one run: the command, its folder and resolved config (``kind``: the registry's)."""

    name: str
    argv: list[str]
    folder: Path
    config: dict[str, Any] = field(default_factory=dict)
    #: (dataset, root, split) of an optional split: the step is skipped, with one line, when it is absent
    optional_split: tuple[str, str, str] | None = None
    kind: StepKind = "per_image"
    #: ``--logger wandb``: the W&B run of a non-training step, open while it runs (its progress) and
    #: given its results once done (:class:`rpnet_pl.pipeline.tracking.StepRun` keyword arguments); None: none
    wandb: dict[str, Any] | None = None
    #: ``--logger csv`` / ``tensorboard``: the same scalars to that log of a non-training step, once done
    scalars_logger: str | None = None
    #: what makes its outputs (:func:`rpnet_pl.pipeline.provenance.settings`), and the steps whose outputs it reads
    settings: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()

    @property
    def trains(self) -> bool:
        return self.kind == "train"

    @property
    def done_marker(self) -> Path:
        return self.folder / layout.DONE

    @property
    def log_path(self) -> Path:
        """``log.txt``; under SLURM every task but the first writes ``log.rank<N>.txt`` beside it."""
        rank = os.environ.get("SLURM_PROCID", "0")
        return self.folder / ("log.txt" if rank == "0" or os.environ.get("SLURM_NTASKS", "1") == "1"
                              else f"log.rank{rank}.txt")

    def is_done(self) -> bool:
        return self.done_marker.is_file()

    def shell(self) -> str:
        return " ".join(shlex.quote(a) for a in self.argv)


def _flags(options: dict[str, Any]) -> list[str]:
    """{'split': 'train', 'scales': [1, 0.5], 'crf': True} -> ['--split', 'train', '--scales', '1', '0.5', '--crf']."""
    out: list[str] = []
    for key, val in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(val, bool):
            out.append(flag if val else "--no-" + key.replace("_", "-"))
        elif isinstance(val, (list, tuple)):
            out += [flag, *map(str, val)]
        elif val is not None:
            out += [flag, str(val)]
    return out


def _logger_config(kind: str, save_dir: Path, experiment: str, stage: str, tags: Sequence[str],
                   seed: int | None = None, varied: dict[str, Any] | None = None) -> Any:
    """The trainer's logger; W&B: one group per experiment, one run per seed (and stage)."""
    if kind == "none":
        return False
    if kind == "csv":
        return {"class_path": "pytorch_lightning.loggers.CSVLogger",
                "init_args": {"save_dir": str(save_dir), "name": "csv", "version": ""}}
    if kind == "tensorboard":
        return {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(save_dir), "name": "tensorboard", "version": ""}}
    if kind == "wandb":
        parts = [experiment, *([seed_dir_name(seed)] if seed is not None else []), stage]
        tags = [*tags, *([seed_dir_name(seed)] if seed is not None else [])]
        offline = not os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "offline"
        init = {"project": os.environ.get("WANDB_PROJECT", "rpnet-pl"), "name": "/".join(parts), "group": experiment,
                "tags": list(tags), "save_dir": str(save_dir), "offline": offline, "job_type": stage}
        if varied:
            init["config"] = dict(varied)
        if os.environ.get("WANDB_ENTITY"):
            init["entity"] = os.environ["WANDB_ENTITY"]
        return {"class_path": "pytorch_lightning.loggers.WandbLogger", "init_args": init}
    raise ConfigError(f"LOGGER must be wandb, csv, tensorboard or none, got {kind!r}")


def substitute(value: Any, run: Path) -> Any:
    """Replace ``${run}`` in every string of a config (e.g. ``weights: ${run}/classifier/checkpoints/last.ckpt``)."""
    if isinstance(value, str):
        return value.replace("${run}", str(run))
    if isinstance(value, dict):
        return {k: substitute(v, run) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, run) for v in value]
    return value


def plan(cfg: dict, runs_dir: str | Path = "runs", gpus: int = 0, nodes: int = 1, logger: str = "csv",
         steps: Sequence[str] | None = None, tags: Sequence[str] = (), accelerator: str = "gpu",
         seed: int | None = None, varied: dict[str, Any] | None = None) -> list[PlannedStep]:
    """The steps of an experiment, with their argv and resolved configs (nothing runs here).

    ``varied``: the keys an ablation variant sets (``{"classifier.model.beta": 0.3}``), top-level
    values of each step's W&B config.

    ``seed``: one run of a multi-seed experiment, in ``RUNS/<name>/seed<k>/`` (see the module doc).

    ``gpus`` processes per node on ``nodes`` nodes (0: one process, Lightning's default device);
    ``accelerator="cpu"`` runs those processes on CPUs (DDP over gloo: CPU clusters, tests).
    """
    name = cfg.get("name", "experiment")
    run = Path(runs_dir) / name
    if seed is not None:
        run = run / seed_dir_name(seed)
    ds = cfg.get("dataset") or {}
    dataset, root = str(ds.get("name", DEFAULT_DATASET)), str(ds.get("root", DEFAULT_ROOT))
    data_args = ["--dataset", dataset, "--root", root]
    dev_args = ["--devices", str(max(gpus, 1)), "--num-nodes", str(nodes)]
    dev_args += ["--accelerator", accelerator] if gpus else []
    rpnet = [sys.executable, "-m", "rpnet_pl.cli"]
    wanted = list(steps) if steps else [s for s in STEP_ORDER if s in cfg]
    if not wanted:
        raise ConfigError(f"experiment {name!r} runs no step: it has none of the sections {', '.join(STEP_ORDER)} "
                          "(extend base.yaml, e.g. 'extends: base.yaml')")
    if unknown_steps(wanted):
        raise ConfigError(f"unknown step(s) {unknown_steps(wanted)}; steps are {list(STEP_ORDER)}")
    out: list[PlannedStep] = []
    for step in wanted:
        spec = STEPS[step]
        sec = substitute(dict(section(cfg, step)), run)
        folder = layout.step_dir(run, step)
        inputs = tuple(producer for _, producer in spec.reads)
        if spec.trains:
            stage_cfg = _training_config(sec, folder, logger, name, step, tags, seed, gpus, nodes, accelerator,
                                         varied or {})
            for key, producer in spec.reads:  # e.g. data.label_dir: the IR labels
                *parents, leaf = key.split(".")
                node = stage_cfg
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = str(output_path(run, producer))
            argv = rpnet + ["fit", step, "--config", str(layout.config_path(run, step))]
            out.append(PlannedStep(step, argv, folder, stage_cfg, kind=spec.kind, inputs=inputs,
                                   settings=provenance.settings(stage_cfg, dataset, root, run)))
            continue
        argv = rpnet + [str(spec.command)]
        for flag, producer in spec.reads:
            argv += ["--" + flag, str(output_path(run, producer))]
        argv += ["--out", str(output_path(run, step))] + data_args + (dev_args if spec.devices else [])
        optional = (dataset, root, str(sec.get("split", spec.default_split))) if spec.optional_split else None
        tracked = None
        if logger == "wandb":
            seed_tags = [seed_dir_name(seed)] if seed is not None else []
            label = "/".join([name, *seed_tags, step])
            tracked = {"group": name, "name": label, "tags": [*tags, *seed_tags],
                       "config": {**(varied or {}), "experiment": name, "seed": seed, step: sec}}
        out.append(PlannedStep(step, argv + _flags(sec), folder, sec, optional, kind=spec.kind, wandb=tracked,
                               scalars_logger=logger if logger in ("csv", "tensorboard") else None,
                               inputs=inputs, settings=provenance.settings(sec, dataset, root, run)))
    return out


def _training_config(sec: dict, folder: Path, logger: str, name: str, step: str, tags: Sequence[str],
                     seed: int | None, gpus: int, nodes: int, accelerator: str,
                     varied: dict[str, Any]) -> dict[str, Any]:
    """A training step's LightningCLI config: its section, with the run's folder, logger, devices and seed."""
    stage_cfg = dict(sec)
    trainer = dict(stage_cfg.get("trainer") or {})
    trainer["default_root_dir"] = str(folder)
    trainer.setdefault("enable_progress_bar", False)  # the step's output goes to log.txt
    trainer["logger"] = _logger_config(logger, folder, name, step, tags, seed, varied)
    if gpus:
        trainer.update({"accelerator": accelerator, "devices": gpus, "num_nodes": nodes})
        if gpus * nodes > 1:
            trainer["strategy"] = "ddp"
    stage_cfg["trainer"] = trainer
    if seed is not None:
        stage_cfg["seed_everything"] = int(seed)
        stage_cfg["data"] = {**(stage_cfg.get("data") or {}), "seed": int(seed)}
    return stage_cfg


#: A line of a step's output that a person should see in the terminal too (see stages.common.ProgressLog).
PROGRESS_MARK = "rpnet_pl.progress: "
_ERROR_LINE = re.compile(r"^(error: |\S*(Error|Exception|Interrupt)\b|Killed\b)")


def failure_cause(lines: Sequence[str], returncode: int = 1) -> str:
    """The line of a failed step's output that says why: the last error line (``error: ...``,
    ``SomeError: ...``); for a process killed by a signal, the signal; else the last non-empty line
    that is not an INFO line; '' when there is none."""
    text = [line.strip() for line in lines if line.strip()]
    for line in reversed(text):
        if _ERROR_LINE.match(line):
            return line
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        return f"killed by {name}" + (" (out of memory? the resume point is checkpoints/last.ckpt)"
                                      if name == "SIGKILL" else "")
    plain = [line for line in text if not line.startswith("INFO ")]
    return plain[-1] if plain else ""


#: W&B's address of this process's W&B service. A step must not inherit it: a run left to be closed at
#: exit (Lightning's WandbLogger leaves it so) stays unflushed in a shared service, its file only a
#: header, until this process ends; with a service of its own, the step's exit flushes it.
WANDB_SERVICE = "WANDB_SERVICE"


def _step_environment(env: dict[str, str] | None, run: Path) -> dict[str, str]:
    """A step process's environment: this one's with unbuffered output, without W&B's service address,
    saying that this process holds ``run``'s lock (:data:`rpnet_pl.pipeline.run_lock.HELD`)."""
    from rpnet_pl.pipeline.run_lock import HELD

    out = {"PYTHONUNBUFFERED": "1", **os.environ, **(env or {}), HELD: str(Path(run).resolve())}
    out.pop(WANDB_SERVICE, None)
    return out


def _run_logged(step: PlannedStep, argv: list[str], env: dict[str, str] | None,
                on_progress: Callable[[str], None] | None = None) -> tuple[int, list[str]]:
    """Run ``argv`` with its output appended to the step's log; progress lines are echoed to this
    process's log (and given to ``on_progress`` as they come). Returns the exit status and the last
    lines of output."""
    tail: deque[str] = deque(maxlen=200)
    with open(step.log_path, "a") as fh:
        fh.write(f"\n$ {' '.join(shlex.quote(a) for a in argv)}\n")
        fh.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                env=_step_environment(env, step.folder.parent))
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                fh.write(line)
                fh.flush()
                tail.append(line.rstrip("\n"))
                if PROGRESS_MARK in line:
                    text = line.split(PROGRESS_MARK, 1)[1].rstrip()
                    log.info("%s: %s", step.name, text)
                    if on_progress is not None:
                        on_progress(text)
            returncode = proc.wait()
        except Stopped as stop:
            _stop_child(proc, stop.signum, fh)
            how = ""
            if step.trains and not layout.step_checkpoint(step.folder).is_file():
                how = (f"it had written no {layout.CHECKPOINTS}/{layout.LAST_CKPT} yet, so re-running the same "
                       "command restarts it from scratch (complete steps are skipped)")
            raise Stopped(stop.signum, f"step '{step.name}' (log: {step.log_path})", how) from None
    return returncode, list(tail)


def _stop_child(proc: subprocess.Popen, signum: int, log_file: Any, grace: float = 30.0) -> None:
    """Let a step stopped with this process stop too, its last output still going to its log:
    Ctrl-C reaches the whole process group, so the step is given ``grace`` seconds first; a SIGTERM
    sent to this process alone is passed on. Killed when it does not stop (its last checkpoint stays
    the resume point)."""
    if signum != signal.SIGINT:
        proc.send_signal(signum)
    try:
        out, _ = proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    log_file.write(out or "")
    log_file.flush()


def absent_split(step: PlannedStep) -> str | None:
    """Why ``step`` cannot run because its optional split is absent (None when it can, or cannot tell)."""
    if step.optional_split is None:
        return None
    from rpnet_pl.data.splits import absent_split_reason

    dataset, root, split = step.optional_split
    return absent_split_reason(dataset, root, split, step=step.name)


_READS = {name: tuple(producer for _, producer in spec.reads) for name, spec in STEPS.items()}


def forced_steps(force: Sequence[str]) -> set[str]:
    """``--force`` steps and every step downstream of them (they read what is remade)."""
    out = set(force)
    for name in force:
        out.update(provenance.downstream(name, _READS))
    return out


def identities(steps: Sequence[PlannedStep]) -> dict[str, str | None]:
    """Each planned step's identity (:func:`rpnet_pl.pipeline.provenance.identity`); a step read but not planned
    counts by the identity its marker recorded (None: not run, or run before identities were kept)."""
    out: dict[str, str | None] = {}
    run = steps[0].folder.parent if steps else None
    for step in steps:
        inputs = {}
        for name in step.inputs:
            if name not in out:
                out[name] = provenance.read_marker(layout.done_marker(run, name)).get("identity")
            inputs[name] = out[name]
        out[step.name] = provenance.identity(step.settings, inputs)
    return out


def check_complete_steps(steps: Sequence[PlannedStep], force: Sequence[str] = ()) -> None:
    """Before any work: a complete step (not forced) whose marker records another identity than the
    plan's is a :class:`ConfigError` naming what differs and the two ways on."""
    forced = forced_steps(force)
    ident = identities(steps)
    for step in steps:
        if step.name in forced or not step.is_done():
            continue
        record = provenance.read_marker(step.done_marker)
        if "identity" not in record or record["identity"] == ident[step.name]:
            continue  # unchanged, or made before identities were recorded
        changed = provenance.differences(record.get("settings") or {}, step.settings)
        inputs = [n for n in step.inputs if (record.get("inputs") or {}).get(n) != ident.get(n)]
        raise ConfigError(provenance.stale_message(step.name, step.folder.parent, changed, inputs))


def _start_afresh(step: PlannedStep) -> None:
    """A forced step: its marker, outputs and resume checkpoint go, and so do the markers of the steps
    after it that this invocation does not run (their inputs are being remade)."""
    import shutil

    run = step.folder.parent
    for name in [step.name, *provenance.downstream(step.name, _READS)]:
        layout.done_marker(run, name).unlink(missing_ok=True)
    targets = [output_path(run, step.name)] if step.name in STEPS else []
    targets += [step.folder / layout.CHECKPOINTS] if step.trains else []
    for target in targets:
        if target == step.folder:  # a step whose output is its folder: only its marker goes
            continue
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    log.info("%s: forced, starts afresh", step.name)


def _check_resume_point(path: Path) -> None:
    """A resume checkpoint that is not a whole zip archive (torch's format; cut short by a full disk or
    a killed copy) is named before the step starts, with the way on."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        bad = f"{type(exc).__name__}: {exc}"
    if bad is not None:
        raise CheckpointError(f"{path}: truncated or unreadable resume checkpoint ({bad}); delete it to restart "
                              "this step from scratch")


def run_steps(steps: Sequence[PlannedStep], dry_run: bool = False, force: Sequence[str] = (),
              env: dict[str, str] | None = None) -> list[str]:
    """Run the steps in order, holding the run folder's lock; returns the names of the steps that ran
    (or would run, when dry). Complete steps made by another configuration stop it before any work
    (:func:`check_complete_steps`)."""
    check_complete_steps(steps, force)
    if dry_run or not steps:
        return _run_steps(steps, dry_run, force, env)
    from rpnet_pl.pipeline.run_lock import run_lock

    with run_lock(steps[0].folder.parent):
        return _run_steps(steps, dry_run, force, env)


def _run_steps(steps: Sequence[PlannedStep], dry_run: bool, force: Sequence[str],
               env: dict[str, str] | None) -> list[str]:
    ran: list[str] = []
    forced = forced_steps(force)
    ident = identities(steps)
    for step in steps:
        if step.is_done() and step.name not in forced:
            log.info("skip %s: complete (%s)", step.name, step.done_marker)
            continue
        reason = absent_split(step)
        if reason:
            log.warning("skip %s: %s", step.name, reason)
            continue
        if dry_run:
            print(step.shell())
            ran.append(step.name)
            continue
        if step.name in forced:
            _start_afresh(step)
        step.folder.mkdir(parents=True, exist_ok=True)
        if step.config:  # a training step's network as LightningCLI builds it: class_path / init_args
            dump_yaml(fit_config(step.name, step.config) if step.trains else step.config, step.folder / layout.CONFIG)
        argv = list(step.argv)
        last = layout.step_checkpoint(step.folder)
        if step.trains and last.is_file():
            _check_resume_point(last)
            argv += ["--ckpt_path", str(last)]
            log.info("resume %s from %s", step.name, argv[-1])
        log.info("run %s: %s", step.name, " ".join(shlex.quote(a) for a in argv))
        start = time.time()
        first_task = os.environ.get("SLURM_PROCID", "0") == "0"  # one W&B run per step, not per task
        tracked = None
        if step.wandb and not step.trains and first_task:
            from rpnet_pl.pipeline.tracking import StepRun

            tracked = StepRun(step.folder.parent, step.name, argv=argv, **step.wandb)
        with tracked or nullcontext():
            returncode, tail = _run_logged(step, argv, env, tracked.progress if tracked else None)
            if returncode != 0:
                cause = failure_cause(tail, returncode)
                raise StepFailed(f"step '{step.name}' failed (exit {returncode})" + (f": {cause}" if cause else "")
                                 + f"; log: {step.log_path}")
            dump_yaml({"argv": argv, "seconds": round(time.time() - start, 1), "identity": ident[step.name],
                       "inputs": {n: ident.get(n) for n in step.inputs}, "settings": step.settings,
                       "code": provenance.code_version()}, step.done_marker)
            if tracked is not None:
                tracked.complete()
        if step.scalars_logger and first_task:
            from rpnet_pl.pipeline.tracking import log_scalars

            log_scalars(step.folder, step.name, step.scalars_logger)
        if step.trains and last.is_file():  # after .done: a complete step is never resumed
            from rpnet_pl.stages.checkpoints import slim_checkpoint

            try:  # the optimiser state only served this step's resume; best effort, the step is done
                saved = slim_checkpoint(last)
                log.info("%s: dropped the optimiser state from %s (%.0f MB)", step.name, last, saved / 1e6)
            except Exception as exc:  # an unreadable checkpoint is the next step's error to name
                log.warning("%s: left %s as it is (%s: %s)", step.name, last, type(exc).__name__, exc)
        ran.append(step.name)
    return ran
