"""EAN for facial expression recognition: `python run.py --mode=...`, the same
command as the installed `ean-tf` (see `flags/cli.py`).

python run.py --mode=predict --images=photo.jpg  # the shipped FERPlus model
python run.py --mode=train                       # built-in data, a few minutes
python run.py --mode=train --config=ferplus48 --data_dir=PATH/ferplus
python run.py --mode=eval --inference_graph=all --run_dir=runs/default
python run.py --help                             # every mode and flag
"""

from flags.cli import main

if __name__ == "__main__":
    main()
