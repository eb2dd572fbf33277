import sys

from keras_encoder.cli import main

sys.exit(main())
