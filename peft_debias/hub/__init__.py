"""The Hugging Face Hub: publishing artifacts in one commit through a Hub session."""
