"""Audio in: uploads decoded to samples with ffmpeg, voice activity, Whisper backends. No Flask here."""
