"""Challenge pipeline at the real size (403 classes, 4 shots, seed 004's model slots with random weights).

    python benchmarks/challenge.py --small     # quick CPU mode
    python benchmarks/challenge.py             # full size (GPU recommended)

See `kshot.pipelines.benchmark` for the options and what is timed.
"""

from kshot.pipelines.benchmark import main

if __name__ == "__main__":
    main()
