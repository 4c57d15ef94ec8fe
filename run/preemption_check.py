"""Preemption under distributed training: a signal to one rank stops every rank at the same update.

    python run/preemption_check.py --config-dir examples/eh_mam --config-name tiny [--updates 8] [--signal-after 3] \\
        common.user_dir=maskssl_fairseq task.data=<manifests> [overrides ...]

Trains two CPU processes (gloo, one process per rank, as ``srun`` starts them; ``run/ddp_check.py``'s launch)
three times: straight through; then with ``SIGUSR1`` sent to rank 1 only, once rank 0 has logged update
``--signal-after``; then the same two commands again. Checks that both signalled ranks exit 75 after one and the
same update, that ``checkpoint_last.pt`` holds it, and that the restarted pair logs the straight pair's values
from the next update on and ends with its parameters, bit for bit. The last line is a JSON summary; exits 1 when
a check fails.
"""

import argparse
import json
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_check import config_update_freq, final_parameters, finish, free_port, launch, train_inner  # noqa: E402

PREEMPTED = 75  # maskssl_fairseq.preemption.PREEMPTED_EXIT_STATUS, without importing fairseq here


def signalled_pair(args, run_dir: Path, freq: int) -> list:
    """Both ranks' logs; rank 1 gets SIGUSR1 once rank 0 logs update ``args.signal_after``."""
    port = free_port()
    procs = [launch(args, run_dir, freq, rank, 2, port) for rank in range(2)]
    logs = [[], []]
    drain = threading.Thread(target=lambda: logs[1].extend(procs[1].stdout))
    drain.start()
    for line in procs[0].stdout:
        logs[0].append(line)
        if f'"num_updates": "{args.signal_after}"' in line and "][train_inner][" in line:
            procs[1].send_signal(signal.SIGUSR1)
    drain.join()
    codes = [proc.wait(timeout=args.timeout) for proc in procs]
    if codes != [PREEMPTED, PREEMPTED]:
        sys.exit(f"preemption_check: the signalled ranks exited {codes}, not [75, 75]:\n{''.join(logs[0][-30:])}")
    return ["".join(log) for log in logs]


def without_timing(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in ("wps", "ups", "wall", "train_wall")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-dir", required=True)
    parser.add_argument("--config-name", required=True)
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--signal-after", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. common.user_dir=... task.data=...")
    args = parser.parse_args()
    if not 1 <= args.signal_after < args.updates - 1:
        parser.error("--signal-after must leave at least two updates after it")
    freq = config_update_freq(args.config_dir, args.config_name, args.overrides)

    with tempfile.TemporaryDirectory() as tmp:
        straight_dir, stopped_dir = Path(tmp) / "straight", Path(tmp) / "stopped"
        port = free_port()
        straight = finish([launch(args, straight_dir, freq, rank, 2, port) for rank in range(2)], args.timeout)[0]
        stopped = signalled_pair(args, stopped_dir, freq)
        stops = [int(found.group(1)) if (found := re.search(r"stopped by .* after update (\d+)", log)) else None
                 for log in stopped]
        saved = torch.load(stopped_dir / "checkpoints" / "checkpoint_last.pt", map_location="cpu",
                           weights_only=False)["optimizer_history"][-1]["num_updates"]
        port = free_port()
        resumed = finish([launch(args, stopped_dir, freq, rank, 2, port) for rank in range(2)], args.timeout)[0]
        expected = [r for r in train_inner(straight) if int(r["num_updates"]) > saved]
        logged_equal = [without_timing(r) for r in train_inner(resumed)] == [without_timing(r) for r in expected]
        a, b = final_parameters(straight_dir), final_parameters(stopped_dir)
        params_equal = a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)

    result = {"signal_after": args.signal_after, "stopped_after": stops, "checkpoint_updates": saved,
              "resumed_from": int(train_inner(resumed)[0]["num_updates"]) if train_inner(resumed) else None,
              "logged_equal_after_resume": logged_equal, "final_parameters_equal": params_equal}
    result["passed"] = (stops[0] == stops[1] == saved and saved >= args.signal_after and result["resumed_from"] == saved + 1
                        and logged_equal and params_equal)
    print(json.dumps(result))
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
