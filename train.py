"""Train PancapChain: ``accelerate launch train.py --recipe recipes/tiny_synthetic.yaml [key=value ...]``.

Also runs as ``python train.py ...`` (single process) or ``pancapchain train ...``.
"""

import sys

from pancapchain.train.run import main

if __name__ == "__main__":
    sys.exit(main())
