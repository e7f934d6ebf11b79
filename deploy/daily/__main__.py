"""`python -m deploy.daily` (make daily-loop): the daily loop of deploy/k8s/daily on this machine."""

from deploy.daily.cli import main

main()
