"""tinyvision: image classifiers trained with PyTorch Lightning, composed with Hydra."""

__version__ = "0.1.0"

from omegaconf import OmegaConf

# ${tinyvision.if_resume:RESUME,THEN,ELSE} picks the run dir and config folder of a resumed run (conf/hydra).
if not OmegaConf.has_resolver("tinyvision.if_resume"):
    OmegaConf.register_new_resolver("tinyvision.if_resume", lambda resume, then, otherwise: then if resume else otherwise)

# Lines that libraries print and a user can do nothing about: silenced once, for every script and test.
from tinyvision.noise import silence_known_noise  # noqa: E402

silence_known_noise()


def __getattr__(name: str):
    """``from tinyvision import train, evaluate``: the Python API, imported when asked (they import Lightning, which a
    script's typo or --help need not wait for)."""
    if name == "train":
        from tinyvision.training import train

        return train
    if name == "evaluate":
        from tinyvision.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'tinyvision' has no attribute {name!r}")
