# Functions shared by the sbatch scripts in slurm/ (and multi_node.sbatch's per-node shell). Sourced, not run.
# shellcheck shell=bash

# The job's id as SLURM names it in logs (%j, or %A_%a for an array task) and as `scontrol requeue` takes it.
job_tag() {
  if [[ -n ${SLURM_ARRAY_JOB_ID:-} && -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
    echo "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
  else
    echo "${SLURM_JOB_ID:?not inside a SLURM job}"
  fi
}

# A rendezvous port per job (20000-29999), so two jobs sharing a node do not collide.
job_port() {
  echo $((20000 + ${SLURM_JOB_ID:?not inside a SLURM job} % 10000))
}

# set_train_args ARGS...: TRAIN_ARGS=(ARGS) plus run.dir=runs/slurm-<job> unless ARGS set run.dir. A requeued job
# keeps its id, so it finds that folder's checkpoints and resumes by itself (checkpoint.resume=auto).
# The default goes just before the first key=value: the CLI takes the overrides as one unbroken run of words.
set_train_args() {
  local arg default
  default="run.dir=runs/slurm-$(job_tag)"
  for arg in "$@"; do
    [[ $arg == run.dir=* ]] && default=""
  done
  TRAIN_ARGS=()
  for arg in "$@"; do
    if [[ -n $default && $arg == *=* && $arg != -* ]]; then
      TRAIN_ARGS+=("$default")
      default=""
    fi
    TRAIN_ARGS+=("$arg")
  done
  if [[ -n $default ]]; then
    TRAIN_ARGS+=("$default")
  fi
}

# train_entry: TRAIN_ENTRY=(what `accelerate launch` runs): the checkout's train_accel.py, or where there is none
# (scripts written by `mnist-dist scripts --write DIR`, the package installed from a wheel) `-m mnist_dist train`.
# shellcheck disable=SC2034  # read by the sbatch script that sources this
train_entry() {
  if [[ -f train_accel.py ]]; then
    TRAIN_ENTRY=(train_accel.py)
  else
    TRAIN_ENTRY=(-m mnist_dist train)
  fi
}

# run_forwarding_signals TARGET COMMAND...: runs COMMAND in the background and waits for it, returning its status.
# A USR1 or TERM that reaches this shell (sbatch --signal=B:USR1@120, `scancel --signal=USR1 --batch`, the end of
# the job) is passed on, and the shell keeps waiting while the training saves its checkpoint:
#   TARGET=workers: to COMMAND's children that run train_accel.py (or `-m mnist_dist train`). COMMAND is
#                   `accelerate launch`, whose torchrun agent forwards neither signal (USR1 would kill it; TERM
#                   makes it stop the workers) and starts them in sessions of their own, out of reach of this
#                   shell's process group.
#   TARGET=command: to COMMAND itself: srun, which passes it to its task on every node.
run_forwarding_signals() {
  local target=$1 pid rc
  shift
  if [[ $target == workers ]]; then
    # COMMAND starts with USR1 ignored: srun and `scancel --signal` signal a task's whole process group, and USR1
    # would kill the launcher. The training processes inherit this until the training installs its handler.
    trap '' USR1
  fi
  "$@" &
  pid=$!
  # shellcheck disable=SC2064  # $target and $pid are expanded now, on purpose
  trap "_forward_signal USR1 $target $pid" USR1
  # shellcheck disable=SC2064
  trap "_forward_signal TERM $target $pid" TERM
  _preempted=""
  while :; do
    _signal_forwarded=""
    rc=0
    wait "$pid" || rc=$?
    # A trapped signal ends `wait` early (status > 128) while COMMAND runs on: wait again. Bash keeps an exited
    # child's status, so waiting again after COMMAND ended is safe.
    [[ -n $_signal_forwarded ]] || break
    _preempted=$_signal_forwarded
  done
  trap - USR1 TERM
  if [[ -n $_preempted && $rc -ne 0 ]]; then
    # The workers checkpointed and exited 75 (EX_TEMPFAIL); a launcher reports any non-zero worker as its own
    # failure (exit 1, with torch's ChildFailedError): the job ends as the preemption it is.
    echo "slurm: the launcher exited $rc after SIG$_preempted: the training saved its checkpoint; ending as preempted (75)" >&2
    rc=75
  fi
  return "$rc"
}

_forward_signal() {  # SIGNAL TARGET PID
  _signal_forwarded=$1
  echo "slurm: SIG$1 received at $(date +%T), passing it on to the training" >&2
  if [[ $2 == command ]]; then
    kill -s "$1" "$3" 2>/dev/null || true
  else
    pkill --signal "$1" --parent "$3" --full 'train_accel\.py|-m mnist_dist train' || true
  fi
}

# One line at the top of each run: with --open-mode=append a requeued job's runs follow each other in one log.
job_banner() {
  echo "slurm: job $(job_tag) run $((${SLURM_RESTART_COUNT:-0} + 1)) on ${SLURM_JOB_NODELIST:-?} at $(date -Is)" \
       "(requeued jobs resume from run.dir's latest checkpoint)"
}
