"""lth: find lottery tickets by iterative magnitude pruning (Frankle & Carbin, ICLR 2019).

For every pruning level: prune, rewind (or re-initialise), train and record; the engine
(`lth.lottery`) does the work. Every run is a batch of trials (`--seed 0 1 2`, several
--prune_type) trained together as one stacked model, each writing its own run folder.
"""

import argparse
import sys

from lth import cli, lottery, methods, resume, runs
from lth.errors import UserError, one_line
from lth.experiment import Experiment, Trial, identity
from lth.record import choose_seed


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args(argv)
    try:
        failures = run(args, cli.explicit_flags(argv))
    except resume.RunFinished as finished:
        print(f"nothing to do: {finished}")
    except UserError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished levels are kept; `python main.py --resume RUN_DIR` (any run"
            " folder of the batch) continues it, alone the newest run of that --dataset,"
            " --arch_type and --prune_type",
            file=sys.stderr,
        )
        return 130
    else:
        for line in failures:
            print(f"error: {line}", file=sys.stderr)
        return 2 if failures else 0
    return 0


def run(args: argparse.Namespace, explicit: set[str]) -> list[str]:
    """The whole batch; returns one line for each trial that stopped (its loss not finite)."""
    batch = lottery.Batch.open(batch_start(args, explicit))
    with batch.held():
        for level in batch.levels():
            batch.prune(level)
            batch.train(level)
            batch.record(level)
            batch.commit(level)
    return batch.finish()


def batch_start(args: argparse.Namespace, explicit: set[str]) -> lottery.BatchStart:
    """The batch `--resume` names, or a new one of checked trials; a seed drawn where none is
    given is shared by the batch's prune types, so that a control pairs with its ticket."""
    if args.resume is not None:
        resumed = resume.locate(args, explicit, cli.validate)
        return lottery.BatchStart(resumed.experiment, resumed.trials, resumed, args.batch_record)
    specs = cli.trial_specs(args)
    seeds = {seed: choose_seed(seed) for _, seed in specs}
    experiments, trials = [], []
    for prune_type, seed in specs:
        arguments = cli.trial_namespace(args, prune_type, seeds[seed])
        cli.validate(arguments)
        if arguments.masks_from is not None:
            arguments.masks_from = str(runs.mask_source(arguments.masks_from, arguments))
            runs.take_mask_args(arguments, explicit)
        experiments.append(Experiment.of(vars(arguments)))
        source = methods.get(prune_type).ticket  # a control: the batch's trial of `source`
        ticket = specs.index((source, seed)) if source is not None else None
        trials.append(Trial(seeds[seed], arguments.prune_type, arguments.masks_from, ticket))
    shared = [identity(e.settings(), e.settings()) for e in experiments]
    assert all(s == shared[0] for s in shared), "the trials of a batch share a recipe"
    return lottery.BatchStart(experiments[0], trials, None, args.batch_record)


if __name__ == "__main__":
    sys.exit(main())
