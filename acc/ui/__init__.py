"""The dashboard (NiceGUI). It talks to the trainer only through `acc.ui.client`."""
