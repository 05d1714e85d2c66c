"""ACC: a workbench to train factored autoencoders and to see and steer training while it runs."""

__version__ = "0.1.0"
