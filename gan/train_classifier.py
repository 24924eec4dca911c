"""``python -m gan.train_classifier triage|lesion|calibrate ...``: the classifiers' command line
(:func:`gan.train.classifier.main`), the command their model cards record.

Only a command: imported, it would hide the function :func:`gan.train_classifier` behind this module's name.
"""

if __name__ == "__main__":
    import sys

    from gan.train.classifier import main

    sys.exit(main())
else:
    raise ImportError("gan.train_classifier is the command `python -m gan.train_classifier`; import from gan")
