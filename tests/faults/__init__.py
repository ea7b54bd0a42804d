"""The fault and bad-input sweep (issue 19): every case reported, as the test that reproduces it.
Each asserts the exit code, one line without a traceback, and that earlier outputs are intact.

Data loss
- synth deleted a user's DIR/dumps and DIR/images ........ test_outputs::test_synth_keeps_a_users_own_dumps_and_images
- --resume never into a run: its checkpoint pruned ........ test_runs::test_resume_never_into_an_existing_run_is_refused
- two runs into one --out: a hybrid model ................. test_runs::test_two_runs_into_one_directory (and the SLURM requeue)
- resume with a changed recipe continued silently ......... test_runs::test_resume_with_a_changed_recipe_is_refused_unless_forced
- a deleted shard filled in by the others ................. test_stream_account (img2dataset folder; any shards)
Hangs
- shards without the plan's ids spun, ignoring SIGTERM .... test_signals::test_shards_without_the_plans_ids_end_in_one_line,
                                                             test_signals::test_sigterm_ends_a_run_waiting_for_data_within_seconds
Code execution and injection
- a pickle planted in the WordNet cache ran ............... test_no_pickle (and no unpickling read anywhere in swagcli)
- formula cells in the fairness CSVs ...................... test_downstream_inputs::test_fairness_csv_cells_cannot_be_formulas
- torch's weights_only=False advice ....................... test_no_pickle::test_malicious_weight_file_is_refused_in_one_clean_line
Silently wrong inputs
- 16-bit PNG white, EXIF ignored, a pixel bomb ............ test_images
- one class 100%, empty folders as classes, duplicated rows,
  an unranked group significant ........................... test_downstream_inputs
- one truncated .gz stopped the build ..................... test_sources
- one undecodable downstream image stopped a probe ........ test_images::test_probe_skips_and_counts_a_corrupt_image
Tracebacks instead of one line
- rerunning a finished pretrain ........................... test_runs::test_rerunning_a_finished_run_changes_nothing
- --out pointing at a file (9 commands) ................... test_cli_inputs::test_out_pointing_at_a_file_is_one_line
- disk full (and the checkpoint's .partial) ............... test_outputs::test_full_disk_*
- corrupt model.safetensors / meta.json / vocab.json ...... test_runs::test_a_damaged_checkpoint_is_named_and_resume_falls_back
- markup in user text; out-of-range numbers; empty recipe;
  duplicate YAML keys; hand-quoted flags; unknown flags ... test_cli_inputs
Signals
- SIGTERM exited 0, SIGINT 130 without a checkpoint ....... test_signals::test_a_signal_checkpoints_says_where_and_resumes
- SIGTERM at any point of a run, or to the whole group .... test_signals::test_sigterm_at_any_point_of_a_run_ends_it_within_seconds
- workers outlived a killed parent ........................ test_signals::test_workers_die_with_a_killed_swag
"""
