"""Research harnesses built on the training platform: the data-constrained study and the speed benchmark."""
