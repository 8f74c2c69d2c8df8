"""Knowledge distillation: the chunked KD loss, data, the LightningModule and the run."""
