"""``python -m gan.train_hybrid ...``: the hybrid GAN's command line (:func:`gan.train.hybrid.main`), the command
its model cards record.

Only a command: imported, it would hide the function :func:`gan.train_hybrid` behind this module's name.
"""

if __name__ == "__main__":
    import sys

    from gan.train.hybrid import main

    sys.exit(main())
else:
    raise ImportError("gan.train_hybrid is the command `python -m gan.train_hybrid`; import from gan")
