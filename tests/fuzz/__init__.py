"""The atheris fuzzer of the decoder (``fuzz_decode.py``) and its seed corpus (``seeds.py``)."""
