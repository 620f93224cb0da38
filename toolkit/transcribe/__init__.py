"""`toolkit transcribe`: text and word times for audio files with a fine-tuned CTC checkpoint.

audio.py (inputs, 16 kHz mono block reader), chunking.py (long-audio chunked inference, segments
cut between words), search.py (the adapter to toolkit.decode's searchers), align.py (CTC forced
alignment: word times and confidences), formats.py (text, jsonl, ctm, srt, vtt), transcriber.py
(the loop), cli.py (the command).
"""
