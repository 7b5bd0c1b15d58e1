from kws_ghost.cli import main

if __name__ == "__main__":
    main()
