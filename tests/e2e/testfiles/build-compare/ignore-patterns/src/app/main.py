src/app/main.py
