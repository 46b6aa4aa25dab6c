"""The main.cf of the private Postfix instances the benchmarks compare against.

Both benchmarks run Postfix from a folder of their own (queue, data, log),
listening on loopback only and holding remote mail with `defer_transports`,
the classic dial-up recipe, as tidepost's held uplink does.
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {folder}/queue
data_directory = {folder}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
alias_maps =
alias_database =
smtpd_banner = $myhostname ESMTP
smtpd_peername_lookup = no
maillog_file_prefixes = {folder}
maillog_file = {folder}/maillog
# hold remote mail, as tidepost's held uplink does; `postqueue -f` releases it
defer_transports = smtp
"""


def main_cf(folder, hostname: str) -> str:
    """main.cf for an instance living in `folder`."""
    return MAIN_CF.format(folder=folder, hostname=hostname)
