"""The training cut between PinnerFormer and the ranker.

PinnerFormer's loss labels each position with the user's positives up to
`future_window_days` later, so a checkpoint trained on the actions before T
has seen, for every day before T, that day's future. Its embeddings of those
days are better than anything it can produce for a new day, and a ranker
trained on them learns to trust the user embedding more than serving
deserves (docs/results.md, "A training-period leak, measured"). Production
avoids this by construction: the model that embeds day d was trained before d.

Here that is made explicit and checked:

- a PinnerFormer checkpoint records its cut (`extra["train_cut_ms"]`): it
  trained on actions strictly before it (`pinrank train pinnerformer --train-cut`);
- the ranker trains on requests in [start, train_end_ms), start defaulting to
  that cut, and refuses a start before it (`check_pinnerformer_cut`);
- evaluation stays on the requests at or after train_end_ms.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from pinrank.backend.units import MS_PER_DAY

if TYPE_CHECKING:  # annotations only: ranker_data pulls in the serving featurizer
    from pinrank.data.dataset import Dataset
    from pinrank.train.ranker_data import RankerData



def format_ms(ms: int) -> str:
    """A cut as people read it: the UTC date, with the time when it is not midnight."""
    t = datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)
    return t.strftime("%Y-%m-%d") if int(ms) % MS_PER_DAY == 0 else t.strftime("%Y-%m-%d %H:%M:%S UTC")


def resolve_cut(value: str, ds: "Dataset") -> int:
    """A cut given on the command line, as epoch ms.

    `YYYY-MM-DD` is that UTC midnight. A fraction f in (0, 1) is the UTC
    midnight at or before the f-quantile of the training period's action
    times (so 0.5 leaves about half the training actions on each side, on
    any dataset); 1 is train_end_ms itself (the whole training period).
    """
    try:
        frac = float(value)
    except ValueError:
        frac = None
    if frac is None:
        try:
            day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        except ValueError:
            raise ValueError(f"cut {value!r}: expected YYYY-MM-DD or a fraction in (0, 1]") from None
        cut = int(day.timestamp() * 1000)
    elif not 0.0 < frac <= 1.0:
        raise ValueError(f"cut {value!r}: a fraction must be in (0, 1]")
    elif frac == 1.0:
        cut = ds.train_end_ms
    else:
        ts = ds.actions["ts_ms"]
        ts = ts[ts < ds.train_end_ms]
        if ts.size == 0:
            raise ValueError("no actions before train_end_ms to place a cut among")
        cut = int(np.quantile(ts, frac, method="lower")) // MS_PER_DAY * MS_PER_DAY
    check_cut_in_training_period(cut, ds)
    return cut


def check_cut_in_training_period(cut_ms: int, ds: "Dataset") -> None:
    """A PinnerFormer cut must leave it some training actions and end by train_end_ms."""
    start, end = int(ds.meta["start_ms"]), ds.train_end_ms
    if not start < cut_ms <= end:
        raise ValueError(f"training cut {format_ms(cut_ms)} is outside the training period "
                         f"({format_ms(start)} .. {format_ms(end)}]")


def check_pinnerformer_cut(cut_ms: int, first_train_ms: int) -> None:
    """Refuse ranker training from before the PinnerFormer's training cut."""
    if first_train_ms < cut_ms:
        raise ValueError(
            f"leak: the PinnerFormer checkpoint trained on actions up to {format_ms(cut_ms)}, after the ranker's "
            f"training start {format_ms(first_train_ms)}, so its embeddings of those days saw their future "
            "positives. Start the ranker at or after the cut (--train-start; the default is the cut), or "
            "train the PinnerFormer with an earlier --train-cut."
        )


def ranker_train_start(train_end_ms: int, train_start_ms: int | None, pinnerformer_cut_ms: int | None) -> int | None:
    """The first instant of the ranker's training period, checked before any work.

    Defaults to the PinnerFormer cut (None without a PinnerFormer: the whole
    training period). ValueError when it is before the cut (a leak) or
    leaves no time before train_end_ms.
    """
    start = pinnerformer_cut_ms if train_start_ms is None else int(train_start_ms)
    if start is None:
        return None
    if pinnerformer_cut_ms is not None:
        check_pinnerformer_cut(pinnerformer_cut_ms, start)
    if start >= train_end_ms:
        why = " (the PinnerFormer's training cut)" if train_start_ms is None else ""
        raise ValueError(
            f"no ranker training period: it starts at {format_ms(start)}{why}, at or after train_end_ms "
            f"{format_ms(train_end_ms)}. Train the PinnerFormer on the earlier part only "
            "(`pinrank train pinnerformer --train-cut 0.5`) so the ranker can train on the rest."
        )
    return start


def ranker_periods(full: "RankerData", train_end_ms: int, train_start_ms: int | None,
                   pinnerformer_cut_ms: int | None) -> "tuple[RankerData, RankerData]":
    """(train, eval) requests: train in [start, train_end_ms), eval from
    train_end_ms on (start: `ranker_train_start`). ValueError on a leak or no
    training requests; the leak check runs again on the requests themselves."""
    start = ranker_train_start(train_end_ms, train_start_ms, pinnerformer_cut_ms)
    train, evaluation = full.split(train_end_ms, start)
    if train.num_requests == 0:
        since = f" from {format_ms(start)}" if start is not None else ""
        raise ValueError(f"no ranker training requests{since} before train_end_ms {format_ms(train_end_ms)}")
    if pinnerformer_cut_ms is not None:
        check_pinnerformer_cut(pinnerformer_cut_ms, int(train.ts_ms.min()))
    return train, evaluation
