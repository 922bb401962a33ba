"""The generated training corpus: TTS engines, phone sets, viseme targets, augmentation."""
