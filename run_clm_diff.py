#!/usr/bin/env python3
"""Drop-in entry point: the reference ``run_clm_diff.py`` command lines run unchanged.

    python3 run_clm_diff.py --model_name_or_path=MODEL --train_diff_model --ignore_long_samples ... --do_train
    torchrun --nproc_per_node=8 run_clm_diff.py ...
    deepspeed run_clm_diff.py --deepspeed ds_config.json ...

It is ``diffmodel train``; see ``diffmodel train --help`` for every option.
"""

import sys

from diffmodel.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
