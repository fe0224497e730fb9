"""raywiz: WizardCoder's recipe (Code Evol-Instruct -> fine-tune -> evaluate -> serve) on Ray."""

__version__ = "0.1.0"
