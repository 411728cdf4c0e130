"""int8 post-training quantization of a model folder, checked against its fp32 original.

    python deploy/quantize.py MODEL_DIR --calib DIR --out OUT_DIR [--check DIR] [--max 300] [--size WxH]

The command-line entry point of ``edgecam.tools.quantize`` (``--help`` there says it all).
"""

from edgecam.tools.quantize import main

if __name__ == "__main__":
    main()
