"""``python -m reptune``: the ``reptune`` command, so that ``accelerate launch -m reptune tune ...``
(and ``torchrun -m reptune ...``) start it in every process of a launch."""

from reptune.cli import main

if __name__ == "__main__":
    main()
