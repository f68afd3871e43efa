"""Pretraining the SSF base codec from folders of videos and images (`adaptjobs pretrain`)."""
