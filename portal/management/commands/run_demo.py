import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from portal.models import Track


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = (
        "Serve the demo at 127.0.0.1:8000 with a CPU worker (validation, standings), a worker for the tracks' "
        "GPU queues (evaluating on CPU here) and beat; Ctrl-C stops them all."
    )

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000")
        parser.add_argument("--no-worker", action="store_true", help="Serve pages only.")

    def handle(self, *args, addr: str, no_worker: bool, **options):
        env = {**os.environ, "DEBUG": os.environ.get("DEBUG", "1")}
        base = settings.BASE_DIR
        commands = {"web": [sys.executable, "manage.py", "runserver", addr, "--noreload"]}
        if not no_worker:
            # Two workers, as in production: a long evaluation never delays validation or the standings.
            gpu_queues = ",".join(track.queue_name for track in Track.objects.all()) or "gpu-4090"
            celery = [sys.executable, "-m", "celery", "-A", "portal"]
            common = ["--pool=solo", "--loglevel=INFO", "--without-gossip", "--without-mingle"]
            commands["worker-cpu"] = [*celery, "worker", "-n", "cpu@%h", "-Q", "cpu", *common]
            commands["worker-gpu"] = [*celery, "worker", "-n", "gpu@%h", "-Q", gpu_queues, *common]
            schedule = os.path.join(str(settings.BROKER_DIR), "celerybeat-schedule")
            commands["beat"] = [*celery, "beat", "--schedule", schedule, "--loglevel=INFO"]
        # Ctrl-C and `kill` both stop the demo cleanly (a shell may start us with SIGINT ignored).
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _interrupt)
        children: dict[str, subprocess.Popen] = {}
        for name, argv in commands.items():
            # Own process group: Ctrl-C reaches us once and we stop each child ourselves, in order.
            children[name] = subprocess.Popen(argv, cwd=base, env=env, start_new_session=True)
            self.stdout.write(f"started {name} (pid {children[name].pid}): {' '.join(argv[1:])}")
        self.stdout.write(self.style.SUCCESS(f"Demo at http://{addr}/ — press Ctrl-C to stop."))
        try:
            while all(child.poll() is None for child in children.values()):
                time.sleep(0.5)
            failed = [name for name, child in children.items() if child.poll() is not None]
            self.stderr.write(f"{', '.join(failed)} stopped; stopping the rest.")
        except KeyboardInterrupt:
            self.stdout.write("\nStopping…")
        finally:
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for name, child in children.items():
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                self.stdout.write(f"{name} stopped.")
