src/app/deep/x.py
