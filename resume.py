"""Finding the run to continue and the state it stopped at (`--resume`, `--start_iter`)."""

import argparse
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

import runs
from results import CHECKPOINTS, RunDir
from utils import UserError

MATCH_ON = ("dataset", "arch_type", "prune_type")
NOT_RECORDED = ("resume", "start_iter")


class RunFinished(Exception):
    """The run asked for has finished every level: nothing to do."""


@dataclass
class Resumed:
    run_dir: RunDir
    args: argparse.Namespace
    start: int  # first level to run
    checkpoint: dict | None  # the state at the end of level `start - 1`; None: start afresh


def read_record(folder: Path) -> dict:
    try:
        return json.loads((folder / "args.json").read_text())
    except FileNotFoundError:
        raise UserError(
            f"--resume {folder}: no args.json there, so it is not a run folder"
            " (or a run stopped before it recorded its arguments: start it again)"
        ) from None
    except (OSError, ValueError) as error:
        raise UserError(f"--resume {folder}: args.json cannot be read ({error})") from None


def newest_matching_run(args: argparse.Namespace) -> Path:
    """The newest run under --results_root with the same dataset, arch and prune type."""
    matching = [
        run
        for run in runs.all_runs(args.results_root)
        if all(run.args.get(name) == getattr(args, name) for name in MATCH_ON)
    ]
    if not matching:
        wanted = ", ".join(f"--{name} {getattr(args, name)}" for name in MATCH_ON)
        raise UserError(f"--resume: no run under {args.results_root}/ with {wanted}")
    return matching[-1].root


def finished_levels(folder: Path) -> int:
    """How many levels have a checkpoint, counting up from level 0 without gaps."""
    done = 0
    while (folder / CHECKPOINTS / f"level_{done}.pth").exists():
        done += 1
    return done


def load_checkpoint(path: Path, level: int) -> dict:
    """The state saved at the end of `level`; a damaged file is a UserError naming it.

    torch.load does not check the checksums its zip format stores, so a file with flipped bytes
    in a tensor would load silently: every member's CRC is checked first.
    """
    retry = f"to run level {level} again, add --start_iter {level}"
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise UserError(f"checkpoint {path} is corrupt ({damaged} fails its checksum); {retry}")
        return torch.load(path, map_location="cpu", weights_only=False)
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} is missing; {retry}") from None
    except Exception as error:  # any unzipping or unpickling fault means the file is damaged
        raise UserError(
            f"checkpoint {path} is corrupt or truncated ({type(error).__name__}); {retry}"
        ) from None


def locate(args: argparse.Namespace, explicit: set[str]) -> Resumed:
    """Merge the recorded arguments with the command line and find where to continue.

    A flag given on the command line must agree with the recorded value; --start_iter names the
    first level to run again (default: the first that did not finish).
    """
    folder = newest_matching_run(args) if args.resume == "latest" else Path(args.resume)
    recorded = read_record(folder)["args"]
    for name in sorted(explicit - set(NOT_RECORDED)):
        if name in recorded and recorded[name] != getattr(args, name):
            raise UserError(
                f"--{name} {getattr(args, name)} contradicts {recorded[name]}"
                f" recorded in {folder / 'args.json'}"
            )
    merged = argparse.Namespace(**{**vars(args), **recorded})
    merged.resume = str(folder)
    done = finished_levels(folder)
    start = args.start_iter if "start_iter" in explicit else done
    merged.start_iter = start
    if start > done:
        raise UserError(
            f"--start_iter {start}: {folder} has finished levels 0..{done - 1} only;"
            f" choose at most {done}"
        )
    if start >= merged.prune_iterations:
        raise RunFinished(f"{folder} has finished all {merged.prune_iterations} levels")
    run_dir = RunDir(folder, merged.arch_type, merged.dataset, merged.prune_type)
    checkpoint = None
    if start > 0:
        checkpoint = load_checkpoint(run_dir.checkpoint_path(start - 1), start - 1)
    return Resumed(run_dir, merged, start, checkpoint)
