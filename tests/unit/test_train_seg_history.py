"""segmenter_job.read_history survives what an interrupted, resumed run leaves in history.csv."""

from __future__ import annotations

from pathlib import Path

from camlabel.train.segmenter_job import LR_SCHEDULES, read_history


def test_history_skips_nul_padding_torn_lines_and_repeated_epochs(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_bytes(
        b"epoch,dice,val_dice\n"
        b"0,0.1,0.05\n"
        b"1,0.2,0.10\n"
        b"2,0.3,0.1"  # torn line: the process was killed here ...
        + b"\x00"
        * 64  # ... and the filesystem padded the block with NULs
        + b"\n1,0.25,0.12\n"  # the resumed run redoes epoch 1 (BackupAndRestore)
        b"2,0.35,0.20\n"
        b"3,0.4,0.30\n"
        b"4,oops,0.1\n"  # unparsable row
    )
    hist = read_history(path)
    assert hist["epoch"] == [0.0, 1.0, 2.0, 3.0]
    assert hist["dice"] == [0.1, 0.25, 0.35, 0.4]
    assert hist["val_dice"] == [0.05, 0.12, 0.2, 0.3]


def test_history_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_history(tmp_path / "none.csv") == {}


def test_cli_lr_schedules_match_the_training_script() -> None:
    """`camlabel train-seg --lr-schedule` lists its choices literally (the CLI does not import
    the training job); they must be the ones the job accepts."""
    from camlabel.cli.segment import train_seg

    opt = next(p for p in train_seg.params if p.name == "lr_schedule")
    assert tuple(opt.type.choices) == LR_SCHEDULES
