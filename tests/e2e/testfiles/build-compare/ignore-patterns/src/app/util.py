src/app/util.py
