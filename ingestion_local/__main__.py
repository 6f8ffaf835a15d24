from ingestion_local.ingestion import run_and_exit

run_and_exit()
