"""The demo eligibility roster: made-up people with obviously made-up details.

Names say "Demo"; SSN last-4 values are runs no one is issued; ZIPs are 00000-area
codes that no post office uses. Two of them share a DOB and SSN last 4 on purpose, so the
walk-through shows the tie-breaker question.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass


@dataclass(frozen=True)
class DemoPerson:
    member_id: str
    first_name: str
    last_name: str
    dob: str
    ssn4: str
    zip: str


PEOPLE = (
    DemoPerson("DEMO-0001", "Avery", "Demopatient", "1980-01-01", "0001", "00501"),
    DemoPerson("DEMO-0002", "Blake", "Samplecase", "1975-02-02", "0002", "00501"),
    DemoPerson("DEMO-0003", "Casey", "Fictional", "1990-03-03", "0003", "00544"),
    # The shared pair: verification asks for the last name.
    DemoPerson("DEMO-0004", "Dana", "Twinsample", "1985-04-04", "0004", "00544"),
    DemoPerson("DEMO-0005", "Eli", "Othersample", "1985-04-04", "0004", "00601"),
)

SOURCE = "demo"


def roster_csv() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["first_name", "last_name", "dob", "ssn4", "zip", "group", "member_id"])
    for person in PEOPLE:
        writer.writerow(
            [
                person.first_name,
                person.last_name,
                person.dob,
                person.ssn4,
                person.zip,
                "Demo Group",
                person.member_id,
            ]
        )
    return out.getvalue().encode()
