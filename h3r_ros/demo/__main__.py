import sys

from h3r_ros.demo.runner import main

sys.exit(main())
