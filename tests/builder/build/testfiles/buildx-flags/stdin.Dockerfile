FROM BASE
COPY . /ctx/
RUN ls /ctx > /listing.txt
