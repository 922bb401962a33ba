"""Dataset readers: the generated corpus, Live Link Face takes, and a plain audio + .npy layout."""
