"""Speech model workers: one thread per speech model runs its jobs in order (Whisper
transcriptions and translations, text-to-speech synthesis), with a bounded queue."""
