"""maskssl-fairseq: masked self-supervised speech and audio models as a fairseq user dir.

``fairseq-hydra-train ... common.user_dir=maskssl_fairseq`` imports this package, which registers every
task, model and criterion below. Each subpackage imports all of its modules, so a new component only
needs a new file.
"""

from . import masking  # noqa: F401  (fairseq-free, imported first so models can use it)
from . import checkpoints, modules, tasks, models, criterions  # noqa: F401
from . import distributed  # noqa: F401  (CPU pytorch_ddp; one random stream per micro-batch)
from .data import seeded_crops  # noqa: F401  (fairseq's audio crops from seed, epoch and index)
from .data import checked_inputs  # noqa: F401  (fairseq's readers stop at bad input, naming the file and line)
from . import seeded_fairseq_masks  # noqa: F401  (fairseq's wav2vec 2.0 / HuBERT masks from torch's seeded RNG)
from . import checkpoint_kinds  # noqa: F401  (model.w2v_path of the wrong kind: field, kind found, kind expected)
from . import guards  # noqa: F401  (a non-finite loss stops the run, naming its terms)
from . import mixed_precision  # noqa: F401  (fairseq's amp / fp16 wrappers with the composite optimizer, one unscale)
from . import checkpoint_safety  # noqa: F401  (one run per save_dir, per-process temporary files, torn-checkpoint fallback)
from . import preemption  # noqa: F401  (SIGTERM / SIGUSR1 / SIGINT: checkpoint at the update boundary, exit 75)
from .features import hidden_states, load_model  # noqa: F401,E402  (layer features of any speech model)
