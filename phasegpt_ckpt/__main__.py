from phasegpt_ckpt.cli import main

main()
