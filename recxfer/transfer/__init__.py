"""Cold-start transfer methods: source-domain user knowledge -> target embeddings."""

from recxfer.transfer.emcdr import EMCDRConfig, EMCDRMapping, apply_emcdr, fit_emcdr

__all__ = ["EMCDRConfig", "EMCDRMapping", "apply_emcdr", "fit_emcdr"]
