r"""Command line: train, evaluate or predict with a config.

This file is intentionally kept short: the logic lives in importable modules
(``train``, ``inference``) so notebooks and custom loops use the same code.

  python -m jaxsemiseg.main --config=configs/default.py --workdir=/tmp/run
  python -m jaxsemiseg.main --config=configs/default.py --workdir=/tmp/run \
      --config.num_steps=3000 --config.dataset.labeled_fraction=0.0625
  python -m jaxsemiseg.main --config=configs/default.py --workdir=/tmp/run --mode=eval
  python -m jaxsemiseg.main --config=configs/default.py --workdir=/tmp/run --mode=predict \
      --config.predict.input_dir=my_images/
"""

import ast
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxsemiseg import inference, self_training_rounds

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py), optionally with ':arg'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, splits.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                          "train (resumes if the workdir has checkpoints), eval a checkpoint, "
                          "or predict masks for config.predict.input_dir.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for --mode=eval (default newest).")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; a ``--config.<key>`` override of a missing key is a usage error.

  ml_collections raises KeyError or AttributeError for those, which absl would print as a
  traceback.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    sys.exit(f"FATAL Flags parsing error: {error}\nPass --helpfull to see help on flags.")
  except (KeyError, AttributeError) as error:
    detail = str(error.args[0]) if error.args else repr(error)
    try:
      # ml_collections sometimes wraps the message in a second repr.
      detail = ast.literal_eval(detail)
    except (ValueError, SyntaxError):
      pass
    sys.exit(f"FATAL Flags parsing error: a --config.<key> override names a key the config "
             f"does not have: {detail}\nA method's hyper-parameters exist only in its own "
             "config (e.g. --config.fixmatch.* needs --config=configs/fixmatch.py).")


def _report(results: dict) -> None:
  scalars = {k: v if isinstance(v, (int, bool)) else round(float(v), 4)
             for k, v in results.items()
             if isinstance(v, (int, float)) or getattr(v, "ndim", 1) == 0}
  print(json.dumps(scalars))
  if "miou" in results:
    print(f"mIoU: {100 * results['miou']:.2f}")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config, workdir = _CONFIG.value, _WORKDIR.value
  if _MODE.value == "train":
    results = self_training_rounds.train_any_method(config, workdir)
    if results.get("preempted"):
      # 128 + SIGTERM, as if the signal had ended the process: schedulers requeue the job.
      raise SystemExit(143)
    _report(results)
    return
  if config.method == self_training_rounds.METHOD:
    # Offline self-training's model is its last round's; eval and predict use that run.
    config, workdir = self_training_rounds.final_round(config, workdir)
  if _MODE.value == "eval":
    results = inference.evaluate_checkpoint(config, workdir, step=_STEP.value)
    _report(results)
    for name, miou in results.get("member_miou", {}).items():
      print(f"{name} mIoU: {100 * miou:.2f}")
    print(f"Reliability diagram: {results['reliability_diagram']}")
  else:
    paths = inference.predict_folder(config, workdir)
    print(f"Wrote {len(paths)} masks to {paths[0].rsplit('/', 1)[0]}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
